"""``add_nonlocal``: the inserted blocks follow the mode of their module, and survive pickling."""

import copy
import pickle

import pytest
import torch
from reference import randomise
from test_insert_and_inflate import TinyResNet2d

from nonlocalnet import add_nonlocal


def _blocks_training(net):
    return [net.layer1[1].nl.training, net.layer2.nl.training]


@pytest.mark.parametrize("training", [False, True])
def test_inserted_blocks_take_the_mode_of_their_module(training):
    net = TinyResNet2d().train(training)
    blocks = add_nonlocal(net, after=["layer1.1", "layer2"], mode="embedded_gaussian")
    assert [b.training for b in blocks] == [training, training]
    assert all(m.training == training for b in blocks for m in b.modules())
    net.train()
    assert _blocks_training(net) == [True, True]
    net.eval()
    assert _blocks_training(net) == [False, False]


def test_a_model_in_eval_mode_keeps_the_new_blocks_statistics():
    """Inference after add_nonlocal on an eval model uses, and leaves unchanged, the running
    statistics (it used batch statistics and overwrote running_var on every call)."""
    net = TinyResNet2d()
    randomise(net, seed=3)
    net.eval()
    blocks = add_nonlocal(net, after=["layer1.1", "layer2"], mode="dot_product")
    for b in blocks:
        randomise(b, seed=5)
    stats = [(b.norm.running_mean.clone(), b.norm.running_var.clone()) for b in blocks]
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        first, second = net(x), net(x[:1])
    for b, (mean, var) in zip(blocks, stats, strict=True):
        assert torch.equal(b.norm.running_mean, mean) and torch.equal(b.norm.running_var, var)
    torch.testing.assert_close(second, first[:1])  # per-sample: no batch statistics


def test_a_network_with_inserted_blocks_pickles_and_keeps_its_keys():
    net = TinyResNet2d()
    randomise(net, seed=3)
    add_nonlocal(net, after=["layer1.1", "layer2"], mode="concatenation")
    for b in (net.layer1[1].nl, net.layer2.nl):
        randomise(b, seed=5)
    net.eval()
    x = torch.randn(2, 3, 16, 16)
    copies = [pickle.loads(pickle.dumps(net, protocol)) for protocol in (0, 2, pickle.HIGHEST_PROTOCOL)]
    for twin in (*copies, copy.deepcopy(net)):
        assert list(twin.state_dict()) == list(net.state_dict())
        assert type(twin.layer1[1]).__name__ == type(net.layer1[1]).__name__
        with torch.no_grad():
            torch.testing.assert_close(twin(x), net(x))
        twin.layer1[1].nl.norm.weight.data.zero_()  # the twin runs its own block
        with torch.no_grad():
            assert not torch.allclose(twin(x), net(x))


def _changed_network():
    net = TinyResNet2d()
    randomise(net, seed=3)
    add_nonlocal(net, after=["layer1.1", "layer2"], mode="embedded_gaussian")
    for b in (net.layer1[1].nl, net.layer2.nl):
        randomise(b, seed=5)
    return net.eval()


def test_torch_save_and_load_of_the_whole_changed_network(tmp_path):
    net = _changed_network()
    torch.save(net, tmp_path / "net.pt")
    back = torch.load(tmp_path / "net.pt", weights_only=False)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(back(x), net(x))
    assert list(back.state_dict()) == list(net.state_dict())


@pytest.mark.slow
def test_a_changed_torchvision_style_network_compiles_and_exports_to_onnx(tmp_path):
    net = _changed_network()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        want = net(x)
        torch.testing.assert_close(torch.compile(net, fullgraph=True)(x), want, atol=1e-5, rtol=1e-5)
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    path = tmp_path / "net.onnx"
    torch.onnx.export(net, (x,), str(path), dynamo=True, dynamic_shapes=({0: torch.export.Dim("batch")},))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for inp in (x, torch.randn(3, 3, 16, 16)):
        (out,) = session.run(None, {session.get_inputs()[0].name: inp.numpy()})
        with torch.no_grad():
            torch.testing.assert_close(torch.from_numpy(out), net(inp), atol=1e-5, rtol=1e-5)
