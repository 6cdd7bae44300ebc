"""Session copies: their own modules, hooks and grads over the original's weights, and no mixing between threads."""

from __future__ import annotations

import threading

import pytest
import torch
from torch import nn

from cnnviz import probe, zoo
from cnnviz.sharing import session_copy


def small_net(requires_grad: bool = True) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))
    model[1].running_mean.uniform_()  # non-default statistics, so a wrong buffer would show in the outputs
    return model.eval().requires_grad_(requires_grad)


@pytest.fixture
def resnet(tmp_path, monkeypatch):
    """One shared ResNet-18 with random weights, as every session of a server would get it."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(zoo, "_SHARED", {})
    monkeypatch.setattr(zoo, "_SHARED_SEEN", {})
    return zoo.shared("resnet18").model


@pytest.mark.parametrize("requires_grad", [True, False])
def test_copy_shares_every_parameters_and_buffers_storage_with_its_own_parameter_objects(requires_grad):
    model = small_net(requires_grad)
    copy = session_copy(model)
    pairs = list(zip(model.state_dict(keep_vars=True).items(), copy.state_dict(keep_vars=True).items()))
    assert pairs and all(a[0] == b[0] for a, b in pairs)
    for (key, original), (_, copied) in pairs:
        assert copied.data_ptr() == original.data_ptr(), key
    for p, q in zip(model.parameters(), copy.parameters()):
        assert p is not q and isinstance(q, nn.Parameter) and q.requires_grad == requires_grad
    for b, c in zip(model.buffers(), copy.buffers()):
        assert b is c


def test_copy_of_a_zoo_model_costs_no_second_copy_of_its_weights(resnet):
    copy = session_copy(resnet)
    ours = {t.untyped_storage().data_ptr() for t in resnet.state_dict().values()}
    theirs = {t.untyped_storage().data_ptr() for t in copy.state_dict().values()}
    assert theirs == ours
    assert not copy.training and not any(p.requires_grad for p in copy.parameters())


def test_copy_has_its_own_modules_and_hooks():
    model = small_net()
    copy = session_copy(model)
    for (name, m), (_, c) in zip(model.named_modules(), copy.named_modules()):
        assert m is not c, name
        for hooks in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks"):
            assert getattr(m, hooks) is not getattr(c, hooks), (name, hooks)
    fired = []
    copy[0].register_forward_hook(lambda module, args, out: fired.append("copy"))
    with torch.no_grad():
        model(torch.rand(1, 3, 8, 8))
    assert fired == [] and not model[0]._forward_hooks
    with torch.no_grad():
        copy(torch.rand(1, 3, 8, 8))
    assert fired == ["copy"]
    copy.train()
    assert not model.training and not model[1].training


def test_copy_has_its_own_grads():
    model = small_net()
    a, b = session_copy(model), session_copy(model)
    a(torch.rand(2, 3, 8, 8)).sum().backward()
    assert all(p.grad is not None for p in a.parameters())
    assert all(p.grad is None for p in b.parameters()) and all(p.grad is None for p in model.parameters())


def test_copy_gives_the_same_outputs_and_leaves_the_original_as_it_was():
    model = small_net()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.rand(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(session_copy(model)(x), model(x))
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_tied_parameters_stay_tied():
    model = nn.Sequential(nn.Linear(4, 4, bias=False), nn.Linear(4, 4, bias=False))
    model[1].weight = model[0].weight
    copy = session_copy(model)
    assert copy[1].weight is copy[0].weight and copy[0].weight is not model[0].weight
    assert len(list(copy.parameters())) == 1


def test_copy_refuses_what_is_not_a_module():
    with pytest.raises(TypeError, match="expected an nn.Module, got a dict"):
        session_copy({"weight": torch.zeros(1)})


def test_sessions_probing_one_shared_model_at_once_never_mix_records(resnet):
    """Eight sessions probe their copies of one shared ResNet-18 at the same moment, each with its own image; each
    gets exactly the records it would get alone."""
    n = 8
    images = [torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(i)) for i in range(n)]
    expected = [probe.run(session_copy(resnet), x) for x in images]
    got: list[dict | None] = [None] * n
    errors: list[BaseException] = []
    start = threading.Barrier(n)

    def session(i: int) -> None:
        try:
            model = session_copy(resnet)
            start.wait()
            got[i] = probe.run(model, images[i])
        except BaseException as e:  # noqa: BLE001  (reported by the main thread)
            errors.append(e)

    threads = [threading.Thread(target=session, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors and all(r is not None for r in got)
    for i in range(n):
        assert list(got[i]) == list(expected[i])
        for name, record in expected[i].items():
            assert torch.equal(got[i][name].output, record.output), (i, name)
            assert torch.equal(got[i][name].input, record.input), (i, name)
    assert not torch.equal(expected[0]["fc"].output, expected[1]["fc"].output)  # the images did differ
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in resnet.modules())
    assert all(p.grad is None for p in resnet.parameters())
