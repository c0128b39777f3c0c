"""Stage: models. Takes a hub id, folder or GGUF file; gives a loaded model and the adapter that knows its
architecture (``adapters/``), its coupled structures (``groups``), where it sits (``placement``), how to
remove units physically (``surgery``) and how to save and reload the result (``io``)."""

from torch import nn


def count_parameters(model: nn.Module) -> int:
    """Unique parameters (tied embeddings counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def count_embedding_parameters(model: nn.Module) -> int:
    """Parameters of the input embedding and of the LM head (once when tied): what structured pruning
    of the decoder layers never touches."""
    modules = [model.get_input_embeddings(), model.get_output_embeddings()]
    unique = {id(p): p for module in modules if module is not None for p in module.parameters()}
    return sum(p.numel() for p in unique.values())
