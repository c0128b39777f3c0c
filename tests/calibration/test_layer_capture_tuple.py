"""capture_layer_inputs on a model whose decoder unpacks ``layer(...)[0]`` (Baichuan's remote code, Bloom in
transformers < 5.2): every layer's input is captured as the hooked real forward sees it, however deep."""

import torch

from hywia.calibration.layerwise import capture_layer_inputs
from hywia.models.adapters import get_adapter


def test_tuple_returning_layers_are_captured_at_every_depth():
    from tiny_families import REMOTE, family_config

    config = family_config("baichuan-7b")
    config.num_hidden_layers = 6  # deeper than the rank of the hidden states: slicing a bare tensor would fail
    torch.manual_seed(0)
    model = REMOTE["baichuan-7b"](config).eval()
    layers = get_adapter(model).decoder_layers()
    ids = torch.randint(0, model.config.vocab_size, (3, 8), generator=torch.Generator().manual_seed(0))
    seen = []
    handle = layers[0].register_forward_pre_hook(lambda module, args, kwargs: seen.append(
        (args[0] if args else kwargs["hidden_states"]).clone()), with_kwargs=True)
    try:
        model(input_ids=ids)
    finally:
        handle.remove()
    captured = capture_layer_inputs(model, get_adapter(model), ids, batch_size=3)
    torch.testing.assert_close(captured.hidden[0], seen[0])
    assert all(len(k) == 1 for k in captured.kwargs)
