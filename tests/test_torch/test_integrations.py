"""Amos under the trainers people use, on CPU with tiny models built from configs (nothing is
downloaded): Hugging Face Trainer (both forms, and resume_from_checkpoint), Lightning, accelerate
with gradient accumulation."""

from __future__ import annotations

import copy
import math
import warnings

import numpy as np
import pytest
import torch

from amosopt.torch import Amos, auto_amos

SEQ = 32
MASK, VOCAB = 256, 257


def stdlib_text() -> bytes:
    from pydoc_data import topics  # ships with Python

    return "".join(topics.topics[k] for k in sorted(topics.topics)).encode()[:200_000]


class MaskedBytes(torch.utils.data.Dataset):
    """Byte sequences with 15% of positions masked, the same for an index on every call."""

    def __init__(self, size: int = 256):
        data = np.frombuffer(stdlib_text(), dtype=np.uint8)
        self.rows = [data[i * SEQ:(i + 1) * SEQ].astype(np.int64) for i in range(size)]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict:
        ids = torch.as_tensor(self.rows[index])
        masked = torch.as_tensor(np.random.default_rng(index).random(SEQ) < 0.15)
        masked[0] = True
        return {"input_ids": torch.where(masked, MASK, ids),
                "labels": torch.where(masked, ids, -100)}


def tiny_bert():
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=64,
                                     max_position_embeddings=SEQ, hidden_dropout_prob=0.0,
                                     attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    return transformers.BertForMaskedLM(config)


def trainer_args(out, **kwargs):
    from transformers import TrainingArguments

    defaults = dict(output_dir=str(out), per_device_train_batch_size=8, max_steps=20,
                    learning_rate=0.05, warmup_steps=2, weight_decay=0.0, logging_steps=1,
                    save_strategy="no", report_to=[], use_cpu=True, seed=0,
                    dataloader_num_workers=0, max_grad_norm=0.0)
    defaults.update(kwargs)
    return TrainingArguments(**defaults)


def losses(trainer) -> list[float]:
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


def test_hf_trainer_with_trainer_optimizer(tmp_path):
    from transformers import Trainer

    from amosopt.torch.integrations import trainer_optimizer

    model = tiny_bert()
    args = trainer_args(tmp_path)
    ids = MaskedBytes()[0]["input_ids"][None]
    optimizer, scheduler = trainer_optimizer(model, args, example_inputs={"input_ids": ids},
                                             momentum=0.9, clip_value=1.0)
    trainer = Trainer(model=model, args=args, train_dataset=MaskedBytes(),
                      optimizers=(optimizer, scheduler))
    trainer.train()
    seen = losses(trainer)
    assert len(seen) == 20 and np.mean(seen[-5:]) < np.mean(seen[:5]) - 0.3
    assert isinstance(trainer.optimizer.optimizer if hasattr(trainer.optimizer, "optimizer")
                      else trainer.optimizer, Amos)
    # the schedule: warm-up 2 steps, constant, cooldown over the last 4 steps to 0
    assert scheduler.warmup_steps == 2 and scheduler.cooldown_steps == 4
    assert optimizer.param_groups[0]["lr"] == 0.0


def test_hf_trainer_with_the_recipe(tmp_path):
    from transformers import Trainer

    from amosopt.suggest import suggest
    from amosopt.torch.integrations import trainer_optimizer

    model = tiny_bert()
    args = trainer_args(tmp_path, max_steps=40)
    recipe = suggest(10**6, 8, steps=40)  # short: 2 warm-up steps, cooldown over the last 8
    ids = MaskedBytes()[0]["input_ids"][None]
    with pytest.warns(UserWarning, match=r"learning_rate=0\.05 is not used: the recipe's xi"):
        optimizer, scheduler = trainer_optimizer(model, args, recipe=recipe,
                                                 example_inputs={"input_ids": ids})
    group = optimizer.param_groups[0]
    for key in ("beta", "momentum", "clip_value", "decay_ratio", "second_moment"):
        assert group[key] == getattr(recipe, key), key
    expected = [recipe.xi * m for m in
                [0.5, 1.0] + [1.0] * 30 + [(40 - s) / 8 for s in range(32, 40)]]
    trainer = Trainer(model=model, args=args, train_dataset=MaskedBytes(),
                      optimizers=(optimizer, scheduler))
    trainer.train()
    rates = [entry["learning_rate"] for entry in trainer.state.log_history
             if "learning_rate" in entry]
    assert rates == pytest.approx(expected, rel=1e-9)
    seen = losses(trainer)
    assert np.mean(seen[-5:]) < np.mean(seen[:5]) - 0.3
    with pytest.raises(ValueError, match=r"for a budget of 40 steps and the Trainer runs 20"):
        trainer_optimizer(model, trainer_args(tmp_path, max_steps=20), recipe=recipe)
    with pytest.raises(TypeError, match="amosopt.suggest.Suggestion"):
        trainer_optimizer(model, args, recipe={"xi": 0.1})


def test_trainer_optimizer_constant_schedule_and_errors(tmp_path):
    from amosopt.torch.integrations import trainer_optimizer

    model = tiny_bert()
    optimizer, scheduler = trainer_optimizer(model, trainer_args(tmp_path, warmup_steps=0.25),
                                             schedule="constant")
    rates = []
    for _ in range(30):  # past max_steps: a constant xi knows no budget
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates[:5] == pytest.approx([0.01, 0.02, 0.03, 0.04, 0.05])  # ceil(0.25 * 20) = 5
    assert rates[5:] == pytest.approx([0.05] * 25)
    with pytest.raises(ValueError, match="Invalid schedule"):
        trainer_optimizer(model, trainer_args(tmp_path), schedule="cosine")
    with pytest.raises(ValueError, match="Invalid num_training_steps"):
        trainer_optimizer(model, trainer_args(tmp_path, max_steps=-1, num_train_epochs=1))
    with pytest.warns(UserWarning, match="weight_decay=0.01 does not apply"):
        trainer_optimizer(model, trainer_args(tmp_path, weight_decay=0.01))


def test_hf_trainer_with_the_factory(tmp_path):
    transformers = pytest.importorskip("transformers")
    if int(transformers.__version__.split(".")[0]) < 5:
        pytest.skip("optimizer factories need transformers >= 5")
    from transformers import Trainer

    from amosopt.torch.integrations import AmosFactory

    model = tiny_bert()
    args = trainer_args(tmp_path, lr_scheduler_type="warmup_stable_decay",
                        lr_scheduler_kwargs={"num_decay_steps": 4})
    trainer = Trainer(model=model, args=args, train_dataset=MaskedBytes(),
                      optimizer_cls_and_kwargs=(AmosFactory, {"lr": 0.05, "momentum": 0.9}))
    trainer.train()
    seen = losses(trainer)
    assert np.mean(seen[-5:]) < np.mean(seen[:5]) - 0.3
    optimizer = trainer.optimizer.optimizer if hasattr(trainer.optimizer, "optimizer") \
        else trainer.optimizer
    assert isinstance(optimizer, Amos)
    # automatic scales: the MLP output kernel (after GELU) has eta = sqrt(2 / 64)
    state = optimizer.state[model.bert.encoder.layer[0].output.dense.weight]
    assert state["eta"] == pytest.approx((2 / 64) ** 0.5)


def test_hf_trainer_resume_equals_uninterrupted(tmp_path):
    from transformers import Trainer

    from amosopt.torch.integrations import trainer_optimizer

    def run(out, **kwargs):
        model = tiny_bert()
        args = trainer_args(out, **kwargs)
        trainer = Trainer(model=model, args=args, train_dataset=MaskedBytes(),
                          optimizers=trainer_optimizer(model, args, momentum=0.9))
        return model, trainer

    model_a, trainer_a = run(tmp_path / "a")
    trainer_a.train()
    model_b, trainer_b = run(tmp_path / "b", save_strategy="steps", save_steps=10)
    trainer_b.train()
    model_c, trainer_c = run(tmp_path / "c")
    trainer_c.train(resume_from_checkpoint=str(tmp_path / "b" / "checkpoint-10"))
    for (name, a), c in zip(model_a.named_parameters(), model_c.parameters(), strict=True):
        torch.testing.assert_close(c, a, rtol=1e-6, atol=1e-7, msg=name)
    assert not torch.equal(model_a.bert.embeddings.word_embeddings.weight,
                           tiny_bert().bert.embeddings.word_embeddings.weight)


# ------------------------------------------------------------------------------------------
# Lightning


def regression_data(batches: int = 10, batch: int = 16):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batches * batch, 8, generator=g)
    y = torch.sin(x.sum(dim=1, keepdim=True))
    return torch.utils.data.TensorDataset(x, y)


def small_mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.GELU(), torch.nn.Linear(32, 1))


def lightning_module():
    lightning = pytest.importorskip("lightning")

    from amosopt.torch import wsd_schedule

    class Regression(lightning.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = small_mlp()

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, _):
            x, y = batch
            loss = torch.nn.functional.mse_loss(self(x), y)
            self.log("loss", loss)
            return loss

        def configure_optimizers(self):
            optimizer = auto_amos(self, lr=0.05, example_inputs=torch.zeros(2, 8), momentum=0.9)
            scheduler = wsd_schedule(optimizer, total_steps=20, warmup_steps=2)
            return {"optimizer": optimizer,
                    "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    return lightning, Regression


def test_lightning_trains_checkpoints_and_resumes(tmp_path):
    """Lightning saves the Amos state and the WSD scheduler in its checkpoint (loaded with
    weights_only=True), restores them exactly, and the resumed run equals the uninterrupted one.

    Full-batch training (one batch per epoch): Lightning 2.6 replays a batch when it resumes
    from an epoch's end and restarts a resumed epoch from its first batch, so with several
    batches per epoch the two runs would see other batches; with one, every step sees the same
    batch and only the optimizer's state decides the result."""
    lightning, Regression = lightning_module()
    from lightning.pytorch.callbacks import Callback, ModelCheckpoint

    restored = {}

    class Snapshot(Callback):
        def on_train_start(self, trainer, module):
            restored["optimizer"] = copy.deepcopy(trainer.optimizers[0].state_dict())
            restored["scheduler"] = trainer.lr_scheduler_configs[0].scheduler.state_dict()

    def fit(ckpt_path=None, callbacks=()):
        module = Regression()
        trainer = lightning.Trainer(max_steps=20, accelerator="cpu", logger=False,
                                    enable_checkpointing=True, callbacks=list(callbacks),
                                    enable_progress_bar=False, enable_model_summary=False,
                                    default_root_dir=tmp_path)
        loader = torch.utils.data.DataLoader(regression_data(), batch_size=160)  # full batch
        trainer.fit(module, loader, ckpt_path=ckpt_path)
        return module, trainer

    every_5 = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=5, save_top_k=-1,
                              filename="{step}")
    full, _ = fit(callbacks=[every_5])
    path = tmp_path / "ckpt" / "step=15.ckpt"  # in the cooldown
    saved = torch.load(path)  # weights_only=True: the Amos state is plain data
    resumed, trainer = fit(ckpt_path=path, callbacks=[Snapshot()])
    for index, state in saved["optimizer_states"][0]["state"].items():
        for key, value in state.items():
            got = restored["optimizer"]["state"][index][key]
            assert torch.equal(got, value) if torch.is_tensor(value) else got == value, key
    assert restored["scheduler"]["last_epoch"] == 15
    assert trainer.global_step == 20 and trainer.optimizers[0].param_groups[0]["lr"] == 0.0
    assert isinstance(trainer.optimizers[0], Amos)
    for a, b in zip(full.parameters(), resumed.parameters(), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-7)
    x, y = regression_data().tensors
    before = torch.nn.functional.mse_loss(small_mlp()(x), y)
    assert torch.nn.functional.mse_loss(full.net(x), y) < 0.9 * before


# ------------------------------------------------------------------------------------------
# accelerate


def test_accelerate_gradient_accumulation_equals_the_big_batch():
    accelerate = pytest.importorskip("accelerate")

    from amosopt.torch import wsd_schedule

    data = regression_data(batches=24, batch=4)

    # plain loop: batches of 16
    model_a = small_mlp().double()
    opt_a = auto_amos(model_a, lr=0.05, momentum=0.9, clip_value=1.0)
    sched_a = wsd_schedule(opt_a, total_steps=6, cooldown_steps=2)
    for x, y in torch.utils.data.DataLoader(data, batch_size=16):
        opt_a.zero_grad()
        torch.nn.functional.mse_loss(model_a(x.double()), y.double()).backward()
        opt_a.step()
        sched_a.step()

    # accelerate: micro-batches of 4, accumulated 4 times
    accelerator = accelerate.Accelerator(gradient_accumulation_steps=4, cpu=True)
    model_b = small_mlp().double()
    opt_b = auto_amos(model_b, lr=0.05, momentum=0.9, clip_value=1.0)
    sched_b = wsd_schedule(opt_b, total_steps=6, cooldown_steps=2)
    loader = torch.utils.data.DataLoader(data, batch_size=4)
    model_b, opt_b, sched_b, loader = accelerator.prepare(model_b, opt_b, sched_b, loader)
    for x, y in loader:
        with accelerator.accumulate(model_b):
            accelerator.backward(torch.nn.functional.mse_loss(model_b(x.double()), y.double()))
            opt_b.step()
            sched_b.step()
            opt_b.zero_grad()
    assert opt_b.optimizer.param_groups[0]["lr"] == opt_a.param_groups[0]["lr"] == 0.0
    for a, b in zip(model_a.parameters(), model_b.parameters(), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12)


# ------------------------------------------------------------------------------------------
# trainer_optimizer: the Trainer's AdamW defaults, and the wrapped optimizer


def test_trainer_optimizer_constant_schedule_needs_no_budget(tmp_path):
    from amosopt.torch.integrations import trainer_optimizer

    model = small_mlp()
    args = trainer_args(tmp_path, max_steps=-1, num_train_epochs=1, warmup_steps=3)
    optimizer, scheduler = trainer_optimizer(model, args, schedule="constant")
    rates = []
    for _ in range(6):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates == pytest.approx([0.05 / 3, 0.1 / 3, 0.05, 0.05, 0.05, 0.05])
    with pytest.raises(ValueError, match=r"warm-up is a fraction of the run \(0\.1\).*warmup_"
                                         r"steps in steps"):
        trainer_optimizer(model, trainer_args(tmp_path, max_steps=-1, num_train_epochs=1,
                                              warmup_steps=0.1), schedule="constant")


@pytest.mark.parametrize("kwargs, budget, batches", [
    (dict(max_steps=1000), {}, 1000),  # a step budget, taken as one epoch
    (dict(max_steps=-1, num_train_epochs=4), dict(num_training_steps=400), 100),
])
def test_trainer_optimizer_warns_about_an_adamw_learning_rate(tmp_path, kwargs, budget,
                                                              batches):
    from amosopt.torch.integrations import trainer_optimizer

    suggested = 1 / math.sqrt(batches)  # the paper's xi = 1/sqrt(N)
    args = trainer_args(tmp_path, learning_rate=5e-5, **kwargs)
    with pytest.warns(UserWarning, match=rf"learning_rate=5e-05 is Amos's global rate xi.*"
                                         rf"AdamW rate: for about {batches:,} batches per epoch"
                                         rf".*gives xi = {suggested:g}"):
        trainer_optimizer(small_mlp(), args, **budget)
    with warnings.catch_warnings():  # a rate of the order of the suggestion: no warning
        warnings.simplefilter("error")
        trainer_optimizer(small_mlp(), trainer_args(tmp_path, learning_rate=suggested / 2,
                                                    **kwargs), **budget)
    with pytest.warns(UserWarning, match=r"learning_rate=5e-05.*AdamW rate"):  # no budget
        trainer_optimizer(small_mlp(), trainer_args(tmp_path, learning_rate=5e-5, max_steps=-1,
                                                    num_train_epochs=1), schedule="constant")


def test_trainer_optimizer_warns_about_global_norm_clipping(tmp_path):
    from amosopt.torch.integrations import trainer_optimizer

    with pytest.warns(UserWarning, match=r"max_grad_norm=1\.0 clips the global gradient norm"
                                         r".*max_grad_norm=0.*clip_value="):
        trainer_optimizer(small_mlp(), trainer_args(tmp_path, max_grad_norm=1.0))


def test_diagnostics_through_accelerates_wrapper():
    accelerate = pytest.importorskip("accelerate")
    from amosopt.torch import unwrap_optimizer
    from amosopt.torch.diagnostics import diagnostics

    model = small_mlp()
    optimizer = auto_amos(model, lr=0.05)
    x, y = regression_data().tensors
    torch.nn.functional.mse_loss(model(x), y).backward()
    optimizer.step()
    wrapped = accelerate.Accelerator(cpu=True).prepare(optimizer)
    assert not isinstance(wrapped, Amos) and not hasattr(wrapped, "diagnostics")
    assert unwrap_optimizer(wrapped) is optimizer
    assert diagnostics(wrapped) == optimizer.diagnostics()
    with pytest.raises(TypeError, match="not amosopt.torch.Amos, nor a wrapper"):
        unwrap_optimizer(torch.optim.SGD(model.parameters(), lr=0.1))
