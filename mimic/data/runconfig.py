"""A run config's values against the model they run: honoured where they can be, refused by name where not.

    data.text_max_length          tokens per text: honoured (at most the text encoder's positions)
    model.dv, model.TGLU_hidden_dim, model.IDLU_hidden_dim, model.CMFU_hidden_dim
                                  sizes of the MIMIC layers: a new model is built with them; a
                                  checkpoint must have them
    model.input_hidden_dim, model.input_image_hidden_dim, model.dt
                                  widths of the encoder's outputs: must be those of the loaded encoder
                                  (read from the model, whatever backbone it is); null: not checked
    model.hidden_dim              read by nothing, here as in the authors' code
    data.num_entity               must be the KB's size (mimic.data.readers.check_num_entity)
    data.eval_chunk_size          entities scored at once in evaluation: honoured
"""
import logging

from .readers import DataError

log = logging.getLogger(__name__)


def mimic_sizes(config) -> dict:
    """MIMICConfig fields for a new model, from the run config."""
    m = config.model
    return {"dv": m.dv, "tglu_dim": m.TGLU_hidden_dim, "vdlu_dim": m.IDLU_hidden_dim, "cmfu_dim": m.CMFU_hidden_dim,
            "text_max_length": config.data.text_max_length}


def model_widths(model) -> dict:
    """config key -> [(width in the model, what it is)], read off the MIMIC layers that consume each width."""
    enc, m = model.encoder, model.matcher
    return {
        # the authors' code uses input_hidden_dim for all three (they are equal in CLIP ViT-B/32)
        "input_hidden_dim": [(enc.image_cls_fc.in_features, "image embedding"),
                             (m.tglu.fc_query.in_features, "text token"), (m.tglu.fc_cls.in_features, "text embedding")],
        "input_image_hidden_dim": [(enc.image_tokens_fc.in_features, "vision token")],
        "dt": [(m.text_cls_layernorm.normalized_shape[0], "text embedding"),
               (m.text_tokens_layernorm.normalized_shape[0], "text token")],
        "dv": [(enc.image_cls_fc.out_features, "image projection (dv)")],
        "TGLU_hidden_dim": [(m.tglu.fc_query.out_features, "TGLU")],
        "IDLU_hidden_dim": [(m.vdlu.dual_ent2men.cls_fc.out_features, "VDLU")],
        "CMFU_hidden_dim": [(m.cmfu.text_fc.out_features, "CMFU")],
    }


def _text_positions(model):
    """How many tokens the text encoder takes (None when the backbone does not say)."""
    clip = model.encoder.clip
    if hasattr(clip, "open_clip_config"):
        return clip.open_clip_config["model_cfg"]["text_cfg"].get("context_length", 77)
    text_config = getattr(getattr(clip, "config", None), "text_config", None)
    return getattr(text_config, "max_position_embeddings", None)


def _positive_int(config, key: str):
    section, name = key.split(".")
    value = config[section][name]
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise DataError(f"{key}: {value!r} must be a positive whole number")
    return value


def apply_run_config(model, config):
    """Check the config's sizes against `model`, then give the model the config's text length. Raises
    DataError naming the first key that cannot be honoured."""
    for key, uses in model_widths(model).items():
        value = config.model[key]
        for width, what in uses if value is not None else ():
            if value != width:
                raise DataError(f"model.{key}: {value} does not match the model's {what} width {width}")
    unit_sizes = {config.model[k] for k in ("TGLU_hidden_dim", "IDLU_hidden_dim", "CMFU_hidden_dim")}
    if config.model.get("hidden_dim") not in unit_sizes:
        log.warning("model.hidden_dim: %s is not used (nor by the authors' code); the unit sizes are "
                    "TGLU_hidden_dim, IDLU_hidden_dim and CMFU_hidden_dim", config.model.get("hidden_dim"))
    length = _positive_int(config, "data.text_max_length")
    positions = _text_positions(model)
    if positions is not None and length > positions:
        raise DataError(f"data.text_max_length: {length} is more than the {positions} token positions of the "
                        f"text encoder")
    if length != model.config.text_max_length:
        log.warning("data.text_max_length: %d tokens per text, where the model was built or trained with %d",
                    length, model.config.text_max_length)
        model.set_text_max_length(length)
    for key in ("data.eval_chunk_size", "data.eval_batch_size", "data.batch_size", "data.embed_update_batch_size"):
        _positive_int(config, key)
    return model
