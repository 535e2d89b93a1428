"""The training engine on a few hundred Fashion-MNIST images: exact resume, NaN stop, run-folder rules,
learning-rate schedule, and that training actually learns."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from compact.engine import TrainConfig, TrainingDiverged, load_checkpoint, open_run, train
from compact.engine import trainer as trainer_module
from compact.errors import CompactError

from _helpers import needs_fmnist

TINY = dict(model="cifar_resnet20", exits=3, subset=128, test_subset=64, batch_size=32, eval_batch_size=64)


def _curves(history):
    keys = ("epoch", "lr", "nu", "gammas", "train_loss", "train_error_pct", "test_loss", "test_error_pct")
    return [{k: r[k] for k in keys} for r in history]


class Interrupt(Exception):
    pass


@needs_fmnist
def test_interrupted_and_resumed_run_equals_uninterrupted(tmp_path):
    # adaptive-2 changes the loss weights at each decay; epochs 2 and 3 start with a decay (milestones
    # 0.4*3 -> 1, 0.6*3 -> 2), so the resumed part exercises the restored optimizers, lr and weighting.
    cfg = TrainConfig(**TINY, method="mwbp", schedule="adaptive-2", epochs=3)
    whole = train(cfg, tmp_path / "whole", progress=False, log=None)

    def stop_after_first(record):
        if record["epoch"] == 1:
            raise Interrupt

    with pytest.raises(Interrupt):
        train(cfg, tmp_path / "cut", progress=False, log=None, on_epoch_end=stop_after_first)
    assert load_checkpoint(tmp_path / "cut" / "checkpoint.pt")["epoch"] == 1
    resumed = train(cfg, tmp_path / "cut", resume=True, progress=False, log=None)

    a, b = open_run(tmp_path / "whole"), open_run(tmp_path / "cut")
    assert _curves(a.history()) == _curves(b.history())
    assert [r["lr"] for r in a.history()] == pytest.approx([0.1, 0.01, 0.001])
    assert [r["nu"] for r in a.history()] == [2.0, 1.0, 0.5]
    na, nb = a.network()[0].state_dict(), b.network()[0].state_dict()
    assert all(torch.equal(na[k], nb[k]) for k in na)
    assert whole["outputs"] == resumed["outputs"]
    _check_tensorboard(tmp_path / "cut", b.history())


def _check_tensorboard(run, history):
    """TensorBoard (when installed) holds each epoch once, resumed part included, with the logged values."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    logged = [(e.step, e.value) for e in events.Scalars("test_error_pct/output_2")]
    assert logged == [(r["epoch"], pytest.approx(r["test_error_pct"][2])) for r in history]


@needs_fmnist
def test_training_learns_and_writes_the_run_folder(tmp_path):
    cfg = TrainConfig(
        **{**TINY, "subset": 768, "test_subset": 500}, method="mwbp", epochs=3, lr=0.05, lr_milestones=[0.9]
    )
    torch.set_flush_denormal(False)
    summary = train(cfg, tmp_path / "run", progress=False, log=None)
    # training on the CPU flushes subnormal floats to zero (they slowed SFP's fine-tuning 5-8x)
    assert (torch.tensor([1e-39]) * 1.0).item() == 0.0
    files = {p.name for p in (tmp_path / "run").iterdir()}
    assert {
        "config.yaml",
        "metrics.jsonl",
        "metrics.csv",
        "checkpoint.pt",
        "model.safetensors",
        "summary.json",
    } <= files
    errors = [o["test_error_pct"] for o in summary["outputs"]]
    # chance is 90% on Fashion-MNIST's 10 balanced classes; 72 SGD steps from scratch (the final output lands
    # at 53-55% depending on the thread count)
    assert max(errors) < 80 and errors[-1] < 62, errors
    history = open_run(tmp_path / "run").history()
    assert len(history) == 3 and all(len(r["test_error_pct"]) == 3 for r in history)
    assert history[-1]["train_loss"][-1] < history[0]["train_loss"][-1]
    csv = (tmp_path / "run" / "metrics.csv").read_text().splitlines()
    assert csv[0].startswith("epoch,lr,nu,train_loss_0") and len(csv) == 4


@needs_fmnist
def test_standard_bp_reports_only_the_final_output(tmp_path):
    cfg = TrainConfig(**TINY, method="standard", epochs=1)
    summary = train(cfg, tmp_path / "run", progress=False, log=None)
    assert [o["test_error_pct"] is None for o in summary["outputs"]] == [True, True, False]


@needs_fmnist
def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    original = trainer_module.train_epoch

    def poisoned(method, loader, device, epoch, *args):
        if epoch == 1:
            with torch.no_grad():
                method.net.backbone.fc.weight.fill_(float("nan"))
        return original(method, loader, device, epoch, *args)

    monkeypatch.setattr(trainer_module, "train_epoch", poisoned)
    cfg = TrainConfig(**TINY, method="mwbp", epochs=3)
    before = None
    # the exits' updates do not touch the final classifier: the final output's update is the one that fails
    message = (
        r"NaN or infinite \(first: backbone.conv1.weight\) after the update of output 2's loss in epoch 2, batch 1"
    )
    with pytest.raises(TrainingDiverged, match=message + ".*checkpoint of epoch 1 is kept"):
        train(cfg, tmp_path / "run", progress=False, log=None)
    state = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    before = state["model"]
    assert state["epoch"] == 1 and all(torch.isfinite(t).all() for t in before.values() if t.is_floating_point())
    assert len(open_run(tmp_path / "run").history()) == 1
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_learning_rate_schedule_is_the_papers():
    cfg = TrainConfig(model="cifar_resnet56", epochs=400)
    assert cfg.milestone_epochs() == [160, 240]
    assert [cfg.lr_at(e) for e in (0, 159, 160, 239, 240, 399)] == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001, 0.001])
    assert (cfg.batch_size, cfg.momentum, cfg.nesterov, cfg.weight_decay) == (128, 0.9, True, 5e-4)
    # a milestone never falls on epoch 0: a 1-epoch run trains at the initial rate (0.4 x 1 rounds to 0)
    short = TrainConfig(model="cifar_resnet20", epochs=1)
    assert short.milestone_epochs() == [1, 1] and short.lr_at(0) == 0.1
    assert TrainConfig(model="cifar_resnet20", epochs=2).lr_at(0) == 0.1


@pytest.mark.parametrize(
    "change, message",
    [
        ({"epochs": 0}, "epochs must be an integer in 1..100000"),
        ({"batch_size": 0}, "batch_size must be an integer >= 1"),
        ({"lr": 0.0}, r"lr must be a number in \(0, 10000\]"),
        ({"lr": -0.1}, r"lr must be a number in \(0, 10000\]"),
        ({"method": "sideways"}, "valid backpropagation methods: joint, mwbp"),
        ({"lr_milestones": [0.6, 0.4]}, "increasing fractions"),
        ({"exits": 3, "exit_blocks": [1, 2]}, "only one way to place exits"),
        ({"model": ""}, "no model given"),
        # a multi-output method with one output would be standard BP under another name
        ({"method": "mwbp"}, "method mwbp trains several outputs but this run has only the final one"),
        ({"method": "joint", "exits": 1}, "give exits .--exits N with N >= 2"),
    ],
)
def test_bad_configuration_is_refused(change, message):
    with pytest.raises(CompactError, match=message):
        TrainConfig(**{"model": "cifar_resnet20", **change})


def test_shipped_configs_hold_the_papers_schedules(tmp_path, monkeypatch):
    from compact.engine import resolve_config

    cifar = resolve_config({"model": "cifar_resnet56"}, "paper-cifar")
    # Section 5.2: batch 128, 400 epochs, lr 0.1 / 10 at 40% and 60%, Nesterov 0.9, weight decay 5e-4, nu 2
    assert (cifar.data, cifar.epochs, cifar.batch_size, cifar.lr) == ("cifar10", 400, 128, 0.1)
    assert cifar.milestone_epochs() == [160, 240] and cifar.lr_at(239) == pytest.approx(0.01)
    assert (cifar.momentum, cifar.nesterov, cifar.weight_decay, cifar.nu) == (0.9, True, 5e-4, 2.0)
    defaults = TrainConfig(model="cifar_resnet56")  # the file writes out the built-in defaults
    for key in ("epochs", "batch_size", "lr", "lr_milestones", "lr_decay", "momentum", "nesterov", "weight_decay"):
        assert getattr(cifar, key) == getattr(defaults, key), key
    # ImageNet, ResNet schedule (He et al. 2016): 90 epochs, batch 256, lr 0.1 / 10 at epochs 30 and 60, wd 1e-4
    imagenet = resolve_config({"model": "torchvision:resnet50", "epochs": 9}, "paper-imagenet-resnet")
    assert imagenet.epochs == 9  # the command line overrides the file
    imagenet = resolve_config({"model": "torchvision:resnet50"}, "paper-imagenet-resnet")
    assert (imagenet.epochs, imagenet.batch_size, imagenet.weight_decay, imagenet.nesterov) == (90, 256, 1e-4, False)
    assert imagenet.milestone_epochs() == [30, 60] and imagenet.image_size == 224

    with pytest.raises(CompactError, match="neither a file nor one of compact's configs; shipped: paper-cifar"):
        resolve_config({"model": "cifar_resnet20"}, "paper-cifra")
    with pytest.raises(CompactError, match="config file nothing/here.yaml does not exist"):
        resolve_config({"model": "cifar_resnet20"}, "nothing/here.yaml")
    (tmp_path / "paper-cifar").write_text("epochs: 3\n")
    monkeypatch.chdir(tmp_path)
    assert resolve_config({"model": "cifar_resnet20"}, "paper-cifar").epochs == 3  # a local file wins


def test_unknown_config_keys_are_named():
    with pytest.raises(CompactError, match="unknown option.*learning_rate.*valid: model"):
        TrainConfig.from_dict({"model": "cifar_resnet20", "learning-rate": 0.1})


@needs_fmnist
def test_run_folder_rules_and_bad_checkpoints(tmp_path):
    cfg = TrainConfig(**TINY, method="mwbp", epochs=1)
    run = tmp_path / "run"
    train(cfg, run, progress=False, log=None)
    good = (run / "model.safetensors").read_bytes()
    with pytest.raises(CompactError, match="holds another run.*--resume.*--overwrite"):
        train(cfg, run, progress=False, log=None)
    assert (run / "model.safetensors").read_bytes() == good

    # a different configuration cannot be resumed into this run
    with pytest.raises(CompactError, match=r"different configuration: epochs \(1 -> 2\)"):
        train(dataclasses.replace(cfg, epochs=2), run, resume=True, progress=False, log=None)

    # a truncated checkpoint is reported as such and left alone
    ckpt = run / "checkpoint.pt"
    data = ckpt.read_bytes()
    ckpt.write_bytes(data[: len(data) // 2])
    with pytest.raises(CompactError, match="checkpoint .* is corrupt or truncated"):
        train(cfg, run, resume=True, progress=False, log=None)
    assert ckpt.read_bytes() == data[: len(data) // 2]

    # a checkpoint of another model (2 exits instead of 3): its configuration says so before anything loads
    other = tmp_path / "other"
    train(dataclasses.replace(cfg, exits=2), other, progress=False, log=None)
    ckpt.write_bytes((other / "checkpoint.pt").read_bytes())
    with pytest.raises(CompactError, match=r"checkpoint was trained with \(exits \(2 in the checkpoint, 3 now\)\)"):
        train(cfg, run, resume=True, progress=False, log=None)

    with pytest.raises(CompactError, match="holds no run to resume"):
        train(cfg, tmp_path / "empty", resume=True, progress=False, log=None)


@needs_fmnist
def test_num_classes_must_match_the_data(tmp_path):
    with pytest.raises(CompactError, match="num_classes is 7 but fashion-mnist.* has 10 classes"):
        train(TrainConfig(**TINY, num_classes=7, epochs=1), tmp_path / "run", progress=False, log=None)
    assert not (tmp_path / "run" / "config.yaml").exists()


# -- callbacks -----------------------------------------------------------------------------------------
class _Counter:
    """A user callback with state: counts updates and batches; its state travels in checkpoints."""

    state_key = "counter"

    def __init__(self) -> None:
        self.updates: list[tuple[int, int, int]] = []
        self.epochs_seen = 0

    def __getattr__(self, name):  # every hook not defined here does nothing
        if name.startswith(("on_", "after_", "close")):
            return lambda *args, **kwargs: None
        raise AttributeError(name)

    def after_update(self, ctx, update, params):
        self.updates.append((ctx.epoch, ctx.batch, update))

    def after_train_epoch(self, ctx):  # before the checkpoint, which stores the state
        self.epochs_seen += 1

    def state_dict(self):
        return {"epochs_seen": self.epochs_seen}

    def load_state_dict(self, state):
        self.epochs_seen = state["epochs_seen"]


@needs_fmnist
def test_callbacks_see_every_update_and_their_state_is_resumed(tmp_path):
    cfg = TrainConfig(**TINY, method="mwbp", epochs=2)
    counter = _Counter()

    def stop(record):
        if record["epoch"] == 1:
            raise Interrupt

    with pytest.raises(Interrupt):
        train(cfg, tmp_path / "run", progress=False, log=None, on_epoch_end=stop, callbacks=[counter])
    # MW-BP: one update per loss, three per batch, shallow first; 128 images / 32 = 4 batches
    assert counter.updates == [(0, b, u) for b in range(4) for u in range(3)]
    resumed = _Counter()
    train(cfg, tmp_path / "run", resume=True, progress=False, log=None, callbacks=[resumed])
    assert resumed.epochs_seen == 2  # one restored from the checkpoint, one seen
    assert resumed.updates[0] == (1, 0, 0)


def test_the_engine_imports_no_pruning_and_compact_has_no_import_cycle():
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "compact"
    modules = {}
    for path in root.rglob("*.py"):
        name = ".".join(path.relative_to(root.parent).with_suffix("").parts).removesuffix(".__init__")
        modules[name] = path
    edges: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("compact"):
                targets.add(node.module)
            elif isinstance(node, ast.Import):
                targets |= {a.name for a in node.names if a.name.startswith("compact")}
        edges[name] = {t for t in targets if t in modules and t != name}
    engine = {n: e for n, e in edges.items() if n.startswith("compact.engine")}
    assert not [(n, t) for n, e in engine.items() for t in e if t.startswith("compact.prune")]
    # module-level cycles inside the engine (a function-level import is still an import: none either)
    seen, stack = set(), []

    def visit(n):
        if n in stack:
            raise AssertionError(f"import cycle: {' -> '.join(stack[stack.index(n) :] + [n])}")
        if n in seen:
            return
        stack.append(n)
        for t in engine.get(n, ()):
            visit(t)
        stack.pop()
        seen.add(n)

    for n in engine:
        visit(n)


def test_a_soft_pruning_configuration_needs_its_callback(tmp_path):
    cfg = TrainConfig(**TINY, epochs=1, soft_prune={"ratios": {"layer1.0.conv1": 0.5}, "round_to": 8})
    with pytest.raises(CompactError, match="prunes filters softly .*compact prune"):
        train(cfg, tmp_path / "run", progress=False, log=None)
    assert not (tmp_path / "run").exists()


def test_evaluation_refuses_logits_that_overflow_from_finite_weights():
    """torchvision's GoogLeNet, one MW-BP step at lr 0.1: every weight finite, yet a convolution overflows
    float32 in evaluation; the test error was computed from NaN logits (argmax of NaN) and reported."""
    from compact import attach_exits
    from compact.engine import evaluate
    from compact.models import create_model

    net = attach_exits(create_model("cifar_resnet20", in_chans=1), 3, input_size=(1, 28, 28))
    with torch.no_grad():
        net.backbone.layer3[0].conv1.weight.mul_(1e30)  # finite, but their products are not
        net.backbone.layer3[0].conv2.weight.mul_(1e30)
    assert all(bool(torch.isfinite(t).all()) for t in net.state_dict().values() if t.is_floating_point())
    loader = [(torch.randn(4, 1, 28, 28), torch.tensor([0, 1, 2, 3]))]
    with pytest.raises(TrainingDiverged, match=r"output 2 gives NaN or infinite logits for 4 of a batch of 4"):
        evaluate(net, loader, torch.device("cpu"))
    losses, errors = evaluate(net, loader, torch.device("cpu"), outputs=[True, True, False])  # the exits are fine
    assert errors[2] is None and all(e is not None for e in errors[:2])


def test_saving_non_finite_weights_says_so(tmp_path):
    from compact.modelfile import ModelInfo, save_model
    from compact.models import create_model

    model = create_model("cifar_resnet20", in_chans=1)
    with torch.no_grad():
        model.fc.weight[0, 0] = float("nan")
    with pytest.raises(CompactError, match="non-finite weights .* e.g. fc.weight; the training diverged"):
        save_model(model, tmp_path / "m.safetensors", ModelInfo("cifar_resnet20", 10, 1, [1, 28, 28]))
    assert not (tmp_path / "m.safetensors").exists()


@needs_fmnist
def test_eval_every_n_epochs_skips_evaluation_between(tmp_path):
    cfg = TrainConfig(**TINY, method="mwbp", epochs=3, eval_every=2)
    summary = train(cfg, tmp_path / "run", progress=False, log=None)
    history = open_run(tmp_path / "run").history()
    evaluated = [all(e is not None for e in r["test_error_pct"]) for r in history]
    assert evaluated == [False, True, True]  # epoch 2, and the last epoch always
    assert [o["test_error_pct"] for o in summary["outputs"]] == history[-1]["test_error_pct"]


def test_a_crafted_method_state_is_refused_and_never_changes_the_sgd_settings():
    """Found by mutating checkpoints at random: a momentum buffer that is not a tensor of its parameter's
    shape used to pass load_state_dict and crash the first update as an internal error; a checkpoint's SGD
    settings used to replace the run's. Now damaged state is refused, and settings stay the run's own."""
    import copy

    from compact import attach_exits, create_method, create_model

    torch.manual_seed(0)
    net = attach_exits(create_model("cifar_resnet20", num_classes=10, in_chans=1), 3, input_size=(1, 16, 16))
    method = create_method("mwbp", net)
    method.train_step(torch.randn(4, 1, 16, 16), torch.tensor([0, 1, 2, 3]))
    good = method.state_dict()
    first = next(iter(good["optimizers"][0]["state"]))
    buffer = good["optimizers"][0]["state"][first]["momentum_buffer"]
    n = sum(len(g["params"]) for g in good["optimizers"][0]["param_groups"])

    def shift(s):
        for g in s["optimizers"][0]["param_groups"]:
            g["params"] = [q + 1 for q in g["params"]]

    def crafted(change):
        state = copy.deepcopy(good)
        change(state)
        return state

    def set_buffer(value):
        return crafted(lambda s: s["optimizers"][0]["state"][first].update(momentum_buffer=value))

    cases = {
        "a dict, not a tensor": set_buffer({"a": 1}),
        "shape": set_buffer(torch.zeros(buffer.numel() + 1)),
        "NaN": set_buffer(torch.full_like(buffer, float("nan"))),
        "lr": crafted(lambda s: s.update(lr=float("nan"))),
        "nu": crafted(lambda s: s["weighting"].update(initial_nu=5.0)),
        "decays": crafted(lambda s: s["weighting"].update(decays=-1)),
        "decays overflow nu": crafted(lambda s: s["weighting"].update(decays=True)),
        # ids are positions: a permutation would hand parameters of one shape each other's momentum
        "ids permuted": crafted(lambda s: s["optimizers"][0]["param_groups"][0]["params"].reverse()),
        "ids shifted": crafted(shift),
        "id a bool": crafted(lambda s: s["optimizers"][0]["param_groups"][0]["params"].__setitem__(1, True)),
        "state of no parameter": crafted(lambda s: s["optimizers"][0]["state"].update({n + 5: {}})),
    }
    messages = {
        "a dict, not a tensor": "momentum_buffer is a dict, not a tensor",
        "shape": "must be floating point, of the parameter's shape, finite",
        "NaN": "must be floating point, of the parameter's shape, finite",
        "lr": "stored learning rate must be a finite number",
        "nu": "starts at nu = 5.0, this run at nu = 2",
        "decays": "-1 learning-rate decays",
        "decays overflow nu": "True learning-rate decays",
        "ids permuted": r"optimizer 0's parameter groups do not list parameters 0\.\.\d+ in order",
        "ids shifted": r"optimizer 0's parameter groups do not list parameters 0\.\.\d+ in order",
        "id a bool": r"optimizer 0's parameter groups do not list parameters 0\.\.\d+ in order",
        "state of no parameter": r"optimizer 0's state is not keyed by parameters 0\.\.\d+",
    }
    for name, state in cases.items():
        with pytest.raises(CompactError, match=messages[name]):
            create_method("mwbp", net).load_state_dict(state)
    # settings in the checkpoint are not the run's: momentum, Nesterov, weight decay and lr scale stay
    hostile = crafted(
        lambda s: [
            g.update(momentum=1e9, nesterov="yes", weight_decay=float("nan"), lr_scale=1e9, dampening=0.5)
            for o in s["optimizers"]
            for g in o["param_groups"]
        ]
    )
    fresh = create_method("mwbp", net)
    fresh.load_state_dict(hostile)
    for opt in fresh.optimizers:
        for g in opt.param_groups:
            assert (g["momentum"], g["nesterov"], g["weight_decay"], g["lr_scale"], g["dampening"]) == (
                0.9, True, 5e-4, 1.0, 0
            )  # fmt: skip
    # and the honest state still restores the momentum exactly
    fresh.load_state_dict(good)
    assert torch.equal(
        fresh.optimizers[0].state[fresh.optimizers[0].param_groups[0]["params"][0]]["momentum_buffer"], buffer
    )
