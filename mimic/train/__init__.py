"""Training, evaluation, checkpoints (the authors' and ours), the Hub, and loading the model a user asks for."""
