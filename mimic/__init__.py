"""mimic-el: MIMIC multimodal entity linking (Luo et al., KDD 2023).

    from mimic import Linker
    linker = Linker.open("kb/demo", init="zero-shot")
    linker.link("Hopper painted Nighthawks in 1942.", "Hopper", image=None, top_k=5)

`Linker` is the library's one door (mimic/linker.py); docs/architecture.md maps the rooms behind it.
"""
__version__ = "0.1.0"
__all__ = ["Linker", "__version__"]


def __getattr__(name):
    # loaded on first use, so that `import mimic` (the version, the command line's --help) stays light
    if name == "Linker":
        from .linker import Linker
        return Linker
    raise AttributeError(f"module 'mimic' has no attribute {name!r}")
