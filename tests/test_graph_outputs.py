"""Hidden states and COMET's layer mix inside the CUDA graph: under ``cuda_graphs="emulate"`` (the bucketed
static-buffer path, exactly as captured) ``output_hidden_states`` and a ``PackedLayerMix`` layer callback take the
graph route and give the numbers of graphs off (COMET ``predict`` itself: ``tests/clients/test_comet.py``)."""

import pytest
import torch
from _oracle import left_padded, random_model
from conftest import tiny_config_kwargs

import xlmrxl
from xlmrxl.clients.layer_mix import PackedLayerMix, PackedLayers
from xlmrxl.fast import stack

TOL = 1e-5


def _model(seed=5):
    cfg = xlmrxl.XLMRobertaXLConfig(**tiny_config_kwargs())
    return random_model(xlmrxl.XLMRobertaXLModel, cfg, seed=seed, add_pooling_layer=False).eval()


class _Mix(torch.nn.Module):
    """Laid out like COMET's ``LayerwiseAttention`` (softmax weights, optional per-row normalisation)."""

    def __init__(self, num_layers: int, layer_norm: bool) -> None:
        super().__init__()
        self.num_layers, self.layer_norm, self.dropout = num_layers, layer_norm, None
        g = torch.Generator().manual_seed(num_layers)
        self.scalar_parameters = torch.nn.ParameterList(
            [torch.nn.Parameter(torch.randn(1, generator=g)) for _ in range(num_layers)]
        )
        self.gamma = torch.nn.Parameter(torch.tensor([0.7]))

    def transform_fn(self, w: torch.Tensor, dim: int) -> torch.Tensor:
        return torch.softmax(w, dim=dim)


@pytest.mark.parametrize("lengths", [[7, 3, 5], [9], [4, 4]])
def test_output_hidden_states_inside_the_graph(lengths):
    m = _model()
    ids, mask = left_padded(m.config, lengths, max(lengths) + 1, seed=2)
    with torch.inference_mode():
        m.set_cuda_graphs(False)
        want = m(ids, attention_mask=mask, output_hidden_states=True)
        assert m.last_route.graph is None
        m.set_cuda_graphs("emulate")
        xlmrxl.reset_stats()
        got = m(ids, attention_mask=mask, output_hidden_states=True)
        assert m.last_route.path == "packed" and m.last_route.graph == "emulated"
        assert xlmrxl.stats()["graphs"]["emulated"] == 1 and stack.graph_reasons(m.encoder) == ()
        got2 = m(ids, attention_mask=mask, output_hidden_states=True)  # the same bucket, run again
    real = mask.bool()
    assert len(got.hidden_states) == len(want.hidden_states) == m.config.num_hidden_layers + 1
    for g, g2, w in zip(got.hidden_states, got2.hidden_states, want.hidden_states):
        assert (g - w).abs()[real].max() <= TOL and torch.equal(g, g2)
    assert torch.equal(got.hidden_states[-1], got.last_hidden_state)
    assert torch.equal(got.hidden_states[0], want.hidden_states[0])  # the embeddings, as given


@pytest.mark.parametrize("layer_norm", [True, False])
def test_layer_mix_inside_the_graph(layer_norm):
    """COMET's mix as the layer callback of ``xlmrxl.fast.run``: graphed (its weights copied into the graph's static
    buffers per call, so a change between calls is seen) equals eager; the kept layer and the output too."""
    m = _model(seed=6)
    enc = m.encoder
    mix = _Mix(len(enc.layer) + 1, layer_norm)
    outs = {}
    for mode in (False, "emulate"):
        m.set_cuda_graphs(mode)
        xlmrxl.reset_stats()
        with torch.no_grad():
            mix.gamma.fill_(0.7)
            for step, lengths in enumerate(([6, 2, 5], [3, 8], [5, 1, 4])):
                mix.gamma.add_(0.1)  # new weights per call
                mix.scalar_parameters[step].add_(0.5)
                ids, mask = left_padded(m.config, lengths, 9, seed=len(lengths))
                emb = m.embeddings(input_ids=ids)
                cb = PackedLayerMix(mix, len(enc.layer) + 1, keep=[1])
                r = xlmrxl.fast.route(enc, xlmrxl.fast.Call(hidden_states=emb, attention_mask=mask))
                out = xlmrxl.fast.run(enc, r, emb, m.backend, return_packed=True, layer_callback=cb)
                layers = PackedLayers(cb, mask, emb.dtype)
                outs.setdefault(mode, []).append((mask, layers.mixed(mix, mask), layers[1], out.last_hidden_state))
                assert m.last_route.graph == (None if mode is False else "emulated")
            for step in range(3):
                mix.scalar_parameters[step].sub_(0.5)
        if mode == "emulate":
            assert xlmrxl.stats()["graphs"]["emulated"] == 3
    for (mask, *want), (_, *got) in zip(outs[False], outs["emulate"]):
        real = mask.bool()
        for g, w in zip(got[:2], want[:2]):
            assert (g - w).abs()[real].max() <= TOL
            assert float(g[~real].abs().max()) == 0
        assert (got[2] - want[2]).abs().max() <= TOL


def test_accelerated_transformers_hidden_states_inside_the_graph():
    """A transformers model patched by ``xlmrxl.accelerate`` (4.x: ``output_hidden_states`` argument; 5.x: the
    output collector): its hidden states come out of the emulated graph, equal to graphs off."""
    pytest.importorskip("transformers")
    from _oracle import hf_twin

    m = _model(seed=8)
    hf = xlmrxl.accelerate(hf_twin(m), backend="reference")
    ids, mask = left_padded(m.config, [7, 3, 5], 8, seed=5)
    outs = {}
    with torch.inference_mode():
        for mode in (False, "emulate"):
            stack.set_graph_mode(hf.encoder, mode)
            outs[mode] = hf(ids, attention_mask=mask, output_hidden_states=True)
            assert xlmrxl.last_route(hf).path == "packed"
            assert xlmrxl.last_route(hf).graph == (None if mode is False else "emulated")
    real = mask.bool()
    want, got = outs[False].hidden_states, outs["emulate"].hidden_states
    assert len(got) == len(want) == m.config.num_hidden_layers + 1
    for g, w in zip(got, want):
        assert (g - w).abs()[real].max() <= TOL
