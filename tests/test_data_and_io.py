"""``eager.utils.data`` (datasets, samplers, the loader, collate), ``eager.save``/``eager.load`` (a checkpoint format
that cannot run code) and ``eager.optim.lr_scheduler``, against PyTorch where it defines the answer."""

from __future__ import annotations

import io
import json
import os
import pickle
import zipfile
from collections import namedtuple

import numpy as np
import pytest

import eager
import tracer
from eager import nn, optim
from eager.nn import functional as F
from eager.utils.data import (
    DataLoader,
    Dataset,
    RandomSampler,
    Subset,
    TensorDataset,
    default_collate,
    random_split,
)

torch = pytest.importorskip("torch")

X = eager.arange(20.0).reshape(10, 2)
Y = eager.arange(10)


# ---------------------------------------------------------------- datasets and the loader


def test_tensor_dataset_indexes_every_tensor_and_checks_their_lengths():
    ds = TensorDataset(X, Y)
    x, y = ds[3]
    assert len(ds) == 10 and x.tolist() == [6.0, 7.0] and y.item() == 3
    with pytest.raises(ValueError, match=r"size mismatch.*\[10, 2\], \[9\]"):
        TensorDataset(X, eager.arange(9))


def test_loader_batches_in_order_and_drop_last_drops_the_short_batch():
    sizes = [len(y) for _, y in DataLoader(TensorDataset(X, Y), batch_size=4)]
    assert sizes == [4, 4, 2] and len(DataLoader(TensorDataset(X, Y), batch_size=4)) == 3
    loader = DataLoader(TensorDataset(X, Y), batch_size=4, drop_last=True)
    assert [y.tolist() for _, y in loader] == [[0, 1, 2, 3], [4, 5, 6, 7]] and len(loader) == 2


def test_shuffle_covers_every_sample_changes_each_epoch_and_repeats_under_manual_seed():
    loader = DataLoader(TensorDataset(X, Y), batch_size=3, shuffle=True)
    eager.manual_seed(7)
    epoch1 = [i for _, y in loader for i in y.tolist()]
    epoch2 = [i for _, y in loader for i in y.tolist()]
    assert sorted(epoch1) == list(range(10)) and sorted(epoch2) == list(range(10)) and epoch1 != epoch2
    eager.manual_seed(7)
    assert [i for _, y in loader for i in y.tolist()] == epoch1
    x, y = next(iter(loader))  # rows stay paired with their labels
    assert x[:, 0].tolist() == [2.0 * v for v in y.tolist()]


def test_shuffle_with_a_generator_ignores_the_default_generator():
    def order(seed_default):
        eager.manual_seed(seed_default)
        loader = DataLoader(TensorDataset(Y), batch_size=10, shuffle=True, generator=eager.Generator(seed=3))
        return next(iter(loader))[0].tolist()
    assert order(0) == order(1) and order(0) != list(range(10))


def test_default_collate_handles_tuples_dicts_namedtuples_numbers_arrays_and_strings_as_torch_does():
    from torch.utils.data import default_collate as torch_collate
    Point = namedtuple("Point", "x y")
    samples = [{"img": np.full((2, 2), i, np.float32), "label": i, "w": 0.5 * i, "ok": i % 2 == 0, "name": f"s{i}",
                "pair": (np.float64(i), [i, i + 1]), "pt": Point(i, float(i))} for i in range(3)]
    ours, theirs = default_collate(samples), torch_collate(samples)

    def compare(a, b):
        if isinstance(b, torch.Tensor):
            assert isinstance(a, eager.Tensor) and str(a.dtype) == str(b.dtype).replace("torch.", "")
            np.testing.assert_array_equal(a.numpy(), b.numpy())
        elif isinstance(b, dict):
            assert a.keys() == b.keys() and all(compare(a[k], b[k]) is None for k in b)
        elif isinstance(b, (list, tuple)):
            assert type(a) is type(b) and len(a) == len(b) and all(compare(x, y) is None for x, y in zip(a, b))
        else:
            assert a == b
    compare(ours, theirs)


def test_a_custom_dataset_of_dicts_loads_like_torch():
    class Squares(Dataset):
        def __len__(self):
            return 5

        def __getitem__(self, i):
            return {"x": eager.tensor([float(i)]), "y": i * i}
    batches = list(DataLoader(Squares(), batch_size=2))
    assert [b["x"].shape for b in batches] == [(2, 1), (2, 1), (1, 1)]
    assert [b["y"].tolist() for b in batches] == [[0, 1], [4, 9], [16]]
    assert [b["y"] for b in DataLoader(Squares(), batch_size=None)][:2] == [0, 1]  # no batching, no collate


def test_the_tensor_dataset_fast_path_gives_what_collating_samples_gives():
    ds = TensorDataset(X, Y)
    fast = list(DataLoader(ds, batch_size=3))
    slow = list(DataLoader(ds, batch_size=3, collate_fn=lambda b: default_collate(b)))
    for (fx, fy), (sx, sy) in zip(fast, slow):
        assert fx.tolist() == sx.tolist() and fy.tolist() == sy.tolist() and fx.dtype == sx.dtype


def test_random_split_and_subset_partition_the_samples():
    a, b = random_split(TensorDataset(Y), [7, 3], generator=eager.Generator(seed=1))
    got = sorted([a[i][0].item() for i in range(len(a))] + [b[i][0].item() for i in range(len(b))])
    assert got == list(range(10)) and len(a) == 7
    assert [len(s) for s in random_split(TensorDataset(Y), [0.5, 0.3, 0.2])] == [5, 3, 2]
    assert Subset(TensorDataset(Y), [4, 1])[1][0].item() == 1
    with pytest.raises(ValueError, match="sum to 9"):
        random_split(TensorDataset(Y), [5, 4])


def test_loader_refuses_what_it_does_not_do():
    ds = TensorDataset(X)
    with pytest.raises(NotImplementedError, match="num_workers=2"):
        DataLoader(ds, num_workers=2)
    with pytest.raises(ValueError, match="mutually exclusive with shuffle"):
        DataLoader(ds, sampler=RandomSampler(ds), shuffle=True)
    with pytest.raises(ValueError, match="positive integer"):
        DataLoader(ds, batch_size=0)


def test_a_traced_training_loop_over_a_loader_equals_eager():
    def run(traced: bool):
        eager.manual_seed(0)
        model = nn.Linear(2, 1)
        opt = optim.SGD(model.parameters(), lr=0.01)

        def step(x, y):
            opt.zero_grad()
            loss = F.mse_loss(model(x).squeeze(1), y.float())
            loss.backward()
            opt.step()
            return loss
        fn = tracer.trace(step, X[:4], Y[:4]) if traced else step
        losses = [float(fn(x, y)) for _ in range(2) for x, y in DataLoader(TensorDataset(X, Y), batch_size=4)]
        return losses, model.weight.detach().numpy().copy()
    (el, ew), (tl, tw) = run(False), run(True)
    np.testing.assert_allclose(tl, el, rtol=1e-6)
    np.testing.assert_allclose(tw, ew, rtol=1e-6)


# ---------------------------------------------------------------- save and load


def _roundtrip(obj, **kw):
    buf = io.BytesIO()
    eager.save(obj, buf)
    buf.seek(0)
    return eager.load(buf, **kw)


def test_tensors_keep_values_dtypes_and_requires_grad():
    for t in (eager.randn(3, 4), eager.arange(5), eager.tensor([True, False]), eager.ones(2, dtype=eager.float64),
              eager.tensor(3.5), eager.randn(2, requires_grad=True)):
        got = _roundtrip(t)
        assert got.dtype == t.dtype and got.shape == t.shape and got.requires_grad == t.requires_grad
        np.testing.assert_array_equal(got.detach().numpy(), t.detach().numpy())


def test_a_model_and_adam_state_resume_exactly_from_a_file(tmp_path):
    def make():
        eager.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(8, 1))
        return model, optim.Adam(model.parameters(), lr=1e-2)
    x = eager.randn(3, 1, 4, 4)

    def step(model, opt):
        opt.zero_grad()
        loss = model(x).pow(2).mean()
        loss.backward()
        opt.step()
        return loss.item()
    model, opt = make()
    step(model, opt)
    path = tmp_path / "ckpt.gd"
    eager.save({"model": model.state_dict(), "opt": opt.state_dict(), "epoch": 1}, path)
    want = [step(model, opt) for _ in range(3)]
    model2, opt2 = make()
    ckpt = eager.load(path)
    model2.load_state_dict(ckpt["model"])
    opt2.load_state_dict(ckpt["opt"])
    assert ckpt["epoch"] == 1 and isinstance(ckpt["opt"]["param_groups"][0]["betas"], tuple)
    assert list(ckpt["opt"]["state"]) == [0, 1, 2, 3, 4, 5]  # int keys stay ints
    assert [step(model2, opt2) for _ in range(3)] == want


def test_containers_special_floats_and_shared_tensors_round_trip():
    t = eager.ones(2)
    p = nn.Parameter(eager.zeros(3))
    obj = {"a": [t, t], (1, "k"): (None, "text", float("inf"), -float("inf")), 2: {"nested": [1, 2.5, True]},
           "p": p, "arr": np.arange(3)}
    got = _roundtrip(obj)
    assert got["a"][0] is got["a"][1]  # one tensor saved twice loads as one tensor
    assert got[(1, "k")] == (None, "text", float("inf"), -float("inf")) and got[2] == {"nested": [1, 2.5, True]}
    assert isinstance(got["p"], nn.Parameter) and got["p"].requires_grad
    assert isinstance(got["arr"], np.ndarray) and got["arr"].tolist() == [0, 1, 2]
    assert np.isnan(_roundtrip(float("nan")))


def test_map_location_and_unsaveable_objects():
    assert _roundtrip(eager.ones(1), map_location="cpu").device == eager.ones(1).device
    with pytest.raises(TypeError, match="a checkpoint holds tensors"):
        eager.save({"model": nn.Linear(1, 1)}, io.BytesIO())
    with pytest.raises(TypeError, match="map_location"):
        _roundtrip(eager.ones(1), map_location={"cuda": "cpu"})


class _Boom:
    """Unpickling this object runs os.system: what a safe loader must never do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_or_torch_file_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "ran"
    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps({"w": _Boom(marker)}))
    with pytest.raises(eager.LoadError, match="a pickle"):
        eager.load(evil)
    torch_file = tmp_path / "torch.pt"
    torch.save({"w": _Boom(marker)}, torch_file)
    with pytest.raises(eager.LoadError, match="torch.save's format is a zip around a pickle"):
        eager.load(torch_file)
    assert not marker.exists()
    with pytest.raises(ValueError, match="weights_only=False is not supported"):
        eager.load(evil, weights_only=False)


def _forged(doc, arrays=()):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("graphduel.json", json.dumps(doc))
        for name, data in arrays:
            zf.writestr(name, data)
    buf.seek(0)
    return buf


def test_forged_and_corrupt_checkpoints_are_refused():
    head = {"format": "graphduel.checkpoint", "version": 1}
    with pytest.raises(eager.LoadError, match="no value of the checkpoint format"):
        eager.load(_forged({**head, "object": {"py/object": "os.system"}}))
    with pytest.raises(eager.LoadError, match="version 9"):
        eager.load(_forged({**head, "version": 9, "object": 1}))
    with pytest.raises(eager.LoadError, match="missing"):
        eager.load(_forged({**head, "object": {"tensor": 0}}))
    obj_array = io.BytesIO()
    np.save(obj_array, np.array([_Boom("x")], dtype=object), allow_pickle=True)
    with pytest.raises(eager.LoadError, match="not a plain numeric array"):
        eager.load(_forged({**head, "object": {"tensor": 0}}, [("arrays/0.npy", obj_array.getvalue())]))
    with pytest.raises(eager.LoadError, match="not a graphduel checkpoint"):
        eager.load(io.BytesIO(b"hello world"))


# ---------------------------------------------------------------- learning-rate schedules


SCHEDULES = {
    "StepLR": dict(step_size=3, gamma=0.5),
    "MultiStepLR": dict(milestones=[2, 5, 5], gamma=0.3),
    "ExponentialLR": dict(gamma=0.9),
    "CosineAnnealingLR": dict(T_max=4, eta_min=0.01),
    "LambdaLR": dict(lr_lambda=lambda epoch: 1 / (epoch + 1)),
}


def _pair(name, kw, groups=1):
    pe = [eager.zeros(1, requires_grad=True) for _ in range(groups)]
    pt = [torch.zeros(1, requires_grad=True) for _ in range(groups)]
    oe = optim.SGD([{"params": [p], "lr": 0.5 / (i + 1)} for i, p in enumerate(pe)], lr=0.5)
    ot = torch.optim.SGD([{"params": [p], "lr": 0.5 / (i + 1)} for i, p in enumerate(pt)], lr=0.5)
    return (oe, getattr(optim.lr_scheduler, name)(oe, **kw)), (ot, getattr(torch.optim.lr_scheduler, name)(ot, **kw))


@pytest.mark.parametrize("name", SCHEDULES)
def test_schedule_equals_torch_for_two_groups_over_twelve_epochs(name):
    (oe, se), (ot, st) = _pair(name, SCHEDULES[name], groups=2)
    for _ in range(12):
        oe.step(), ot.step(), se.step(), st.step()
        assert se.get_last_lr() == pytest.approx(st.get_last_lr(), rel=1e-14)
        assert [g["lr"] for g in oe.param_groups] == se.get_last_lr()


@pytest.mark.parametrize("name", SCHEDULES)
def test_schedule_state_dict_resumes_where_it_stopped(name):
    (oe, se), _ = _pair(name, SCHEDULES[name])
    for _ in range(5):
        se.step()
    state = _roundtrip({"opt": oe.state_dict(), "sched": se.state_dict()})  # through a checkpoint file
    want = [se.step() or se.get_last_lr()[0] for _ in range(4)]
    (oe2, se2), _ = _pair(name, SCHEDULES[name])
    oe2.load_state_dict(state["opt"])
    se2.load_state_dict(state["sched"])
    assert [se2.step() or se2.get_last_lr()[0] for _ in range(4)] == pytest.approx(want, rel=1e-14)


def test_two_chained_schedules_equal_torch():
    pe, pt = eager.zeros(1, requires_grad=True), torch.zeros(1, requires_grad=True)
    oe, ot = optim.SGD([pe], lr=1.0), torch.optim.SGD([pt], lr=1.0)
    ours = [optim.lr_scheduler.ExponentialLR(oe, 0.9), optim.lr_scheduler.StepLR(oe, 2, 0.5)]
    theirs = [torch.optim.lr_scheduler.ExponentialLR(ot, 0.9), torch.optim.lr_scheduler.StepLR(ot, 2, 0.5)]
    for _ in range(7):
        oe.step(), ot.step()
        for s, t in zip(ours, theirs):
            s.step(), t.step()
        assert oe.param_groups[0]["lr"] == pytest.approx(ot.param_groups[0]["lr"], rel=1e-14)


def test_reduce_on_plateau_equals_torch():
    pe, pt = eager.zeros(1, requires_grad=True), torch.zeros(1, requires_grad=True)
    oe, ot = optim.SGD([pe], lr=1.0), torch.optim.SGD([pt], lr=1.0)
    kw = dict(factor=0.5, patience=2, cooldown=1, min_lr=0.1)
    se, st = optim.lr_scheduler.ReduceLROnPlateau(oe, **kw), torch.optim.lr_scheduler.ReduceLROnPlateau(ot, **kw)
    for metric in [5, 4, 4, 4, 4, 3.9999, 4, 4, 4, 4, 4, 4, 4, 4]:
        se.step(eager.tensor(metric)), st.step(metric)
        assert se.get_last_lr() == pytest.approx(st.get_last_lr())
    assert se.get_last_lr()[0] < 1.0  # the plateaus did reduce it


def test_a_traced_step_follows_the_schedule_by_retracing_on_each_new_rate():
    def run(traced: bool):
        w = eager.ones(3, requires_grad=True)
        opt = optim.SGD([w], lr=1.0)
        sched = optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)

        def step(x):
            opt.zero_grad()
            (w * x).sum().backward()
            opt.step()
        fn = tracer.trace(step, eager.ones(3)) if traced else step
        for _ in range(6):
            fn(eager.ones(3))
            sched.step()
        return w.detach().numpy(), fn
    (want, _), (got, traced) = run(False), run(True)
    np.testing.assert_allclose(got, want)  # 1 - (1 + 1 + 0.5 + 0.5 + 0.25 + 0.25)
    np.testing.assert_allclose(got, [-2.5] * 3)
    assert traced.retrace_count >= 2
