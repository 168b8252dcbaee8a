"""The optimizers of ``amos compare``, as plain data (no torch): the command line reads their
names at parse time, :func:`amosopt.compare.optimizers.build` constructs them."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

__all__ = ["AMOS", "OPTIMIZERS", "OptimizerInfo"]


@dataclass(frozen=True)
class OptimizerInfo:
    name: str
    hyper: str  # the tuned hyper-parameter: "xi multiplier" or "lr"
    description: str
    module: str | None = None  # an optional package it needs

    def available(self) -> bool:
        return self.module is None or importlib.util.find_spec(self.module) is not None


OPTIMIZERS: dict[str, OptimizerInfo] = {
    info.name: info for info in (
        OptimizerInfo("amos", "xi multiplier",
                      "Amos, constant xi from amos suggest (the paper's recipe; no budget)"),
        OptimizerInfo("amos-wsd", "xi multiplier",
                      "Amos with a warmup-stable-decay cooldown to 0 at the budget"),
        OptimizerInfo("amos-recipe", "xi multiplier",
                      "Amos with the recipe of amos suggest --steps for the budget (before "
                      "Amos's own decay: warm-up, WSD cooldown, decay ratio, row-col, beta; "
                      "else the paper's constant xi); the --amos-* flags do not apply"),
        OptimizerInfo("amos-recipe-nomom", "xi multiplier",
                      "amos-recipe without momentum (about 1% of AdamW's state)"),
        OptimizerInfo("adamw", "lr", "AdamW, linear warm-up then linear decay to 0"),
        OptimizerInfo("adamw-wsd", "lr", "AdamW with the same warmup-stable-decay schedule"),
        OptimizerInfo("adafactor", "lr",
                      "torch.optim.Adafactor (factored state), linear warm-up and decay to 0"),
        OptimizerInfo("schedulefree", "lr",
                      "schedulefree.AdamWScheduleFree (no schedule; weight averaging)",
                      module="schedulefree"),
        OptimizerInfo("adam-mini", "lr",
                      "Adam-mini (one second moment per output row or block: about half of "
                      "AdamW's state), with adamw-wsd's schedule", module="adam_mini"),
        OptimizerInfo("muon", "lr",
                      "torch.optim.Muon for the hidden matrices, AdamW for embeddings, the "
                      "output layer, norms and biases; one lr (Muon's matched to AdamW's RMS), "
                      "with adamw-wsd's schedule"),
    )
}
#: the optimizers tuned on multiples of the suggested xi (Amos's), not on a learning rate
AMOS = tuple(name for name, info in OPTIMIZERS.items() if info.hyper == "xi multiplier")
