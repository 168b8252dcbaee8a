"""State sharding: specs follow the parameters'; a sharded jitted run equals the unsharded one.

The multi-device part runs in a subprocess: ``XLA_FLAGS=--xla_force_host_platform_device_count=4``
only works if set before jax is imported, and other test files import jax first.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

jax = pytest.importorskip("jax")
pytest.importorskip("optax")
import jax.numpy as jnp  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

from amosopt.optax import amos, slot_partition_spec, state_sharding  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("spec,slot,expected", [
    (P("x", "y"), (8, 16), P("x", "y")),
    (P("x", "y"), (8, 1), P("x", None)),
    (P("x", "y"), (1, 16), P(None, "y")),
    (P("x", "y"), (), P()),
    (P(("x", "y")), (8, 4), P(("x", "y"), None)),  # a short spec is padded with None
    (None, (8, 4), P(None, None)),
])
def test_slot_partition_spec(spec, slot, expected):
    assert slot_partition_spec(spec, slot) == expected


def test_state_sharding_specs_for_chain_and_wrappers():
    params = {"w": jnp.zeros((8, 16)), "b": jnp.zeros(16), "s": jnp.zeros(())}
    specs = {"w": P("x", "y"), "b": P("y"), "s": P()}
    tx = amos(0.01, 1.0, {"w": (8, 1), "b": (), "s": ()}, momentum=0.9)
    wrapped = optax_multisteps(tx)
    state = jax.eval_shape(wrapped.init, params)
    out = state_sharding(state, specs)
    inner = out.inner_opt_state
    assert inner[1].v == {"w": P("x", None), "b": P(), "s": P()}
    assert inner[1].b == inner[1].v
    assert inner[1].count == P()
    assert inner[2].ema == specs  # the momentum is parameter-shaped
    assert out.acc_grads == specs
    assert out.mini_step == P()
    assert jax.tree.structure(out) == jax.tree.structure(state)


def optax_multisteps(tx):
    import optax

    return optax.MultiSteps(tx, every_k_schedule=2)


def test_state_sharding_rejects_bad_leaves():
    with pytest.raises(ValueError, match="param_sharding leaves"):
        state_sharding({"w": jnp.zeros(2)}, {"w": ("x",)})


SCRIPT = textwrap.dedent("""
    import json
    import jax, jax.numpy as jnp, numpy as np, optax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from amosopt.optax import amos, state_sharding

    jax.config.update("jax_enable_x64", True)
    assert jax.device_count() == 4, jax.devices()
    mesh = Mesh(np.array(jax.devices()).reshape(2, 2), ("x", "y"))
    rng = np.random.default_rng(0)
    shapes = {"w": (8, 16), "emb": (16, 8), "b": (16,), "s": ()}
    params = {k: jnp.asarray(rng.normal(size=s)) for k, s in shapes.items()}
    specs = {"w": P("x", "y"), "emb": P("y", None), "b": P("y"), "s": P()}
    tx = amos(0.05, {"w": "sqrt(1/SHAPE[0])", ".*": 0.5},
              {"w": "(1, SHAPE[1])", "emb": "(SHAPE[0], 1)", ".*": ()},
              momentum=0.9, clip_value=1.0)

    def step(params, state, noise):
        grads = jax.tree.map(lambda t, n: 2 * (t - 0.3) + n, params, noise)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    param_sh = jax.tree.map(lambda s: NamedSharding(mesh, s), specs)
    state_sh = state_sharding(jax.eval_shape(tx.init, params), param_sh)
    sharded_step = jax.jit(step, in_shardings=(param_sh, state_sh, param_sh),
                           out_shardings=(param_sh, state_sh))
    plain_step = jax.jit(step)
    p1, s1 = jax.device_put(params, param_sh), jax.device_put(tx.init(params), state_sh)
    p2, s2 = params, tx.init(params)
    for i in range(30):
        noise = {k: jnp.asarray(rng.normal(size=s)) for k, s in shapes.items()}
        p1, s1 = sharded_step(p1, s1, jax.device_put(noise, param_sh))
        p2, s2 = plain_step(p2, s2, noise)
    error = max(float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))
                for a, b in zip(jax.tree.leaves((p1, s1)), jax.tree.leaves((p2, s2))))
    print(json.dumps({
        "error": error,
        "moved": float(jnp.max(jnp.abs(p2["w"] - params["w"]))),
        "w": str(p1["w"].sharding.spec),
        "v_w": str(s1[1].v["w"].sharding.spec),
        "v_emb": str(s1[1].v["emb"].sharding.spec),
        "ema_w": str(s1[2].ema["w"].sharding.spec),
        "v_w_devices": len(s1[1].v["w"].sharding.device_set),
        "v_w_shard": list(s1[1].v["w"].addressable_shards[0].data.shape),
    }))
""")


def run_on_4_cpu_devices(script: str) -> dict:
    """Runs ``script`` in a fresh interpreter with 4 CPU devices; returns its last JSON line."""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
               JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    result = subprocess.run([sys.executable, "-c", script], env=env, cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_sharded_step_equals_unsharded_on_4_cpu_devices():
    report = run_on_4_cpu_devices(SCRIPT)
    assert report["error"] <= 1e-12, report
    assert report["moved"] > 1e-2, report
    assert report["w"] == str(P("x", "y"))
    assert report["v_w"] == str(P(None, "y"))  # slot (1, 16): the reduced axis is not split
    assert report["v_emb"] == str(P("y", None))
    assert report["ema_w"] == str(P("x", "y"))
    assert report["v_w_devices"] == 4 and report["v_w_shard"] == [1, 8]


SCRIPT_2D = textwrap.dedent("""
    import json
    import jax, jax.numpy as jnp, numpy as np, optax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from amosopt.optax import amos, auto_scales, state_sharding

    jax.config.update("jax_enable_x64", True)
    mesh = Mesh(np.array(jax.devices()).reshape(2, 2), ("data", "model"))
    rng = np.random.default_rng(0)
    params = {"up": {"kernel": jnp.asarray(rng.normal(size=(16, 32)) / 4), "bias": jnp.zeros(32)},
              "down": {"kernel": jnp.asarray(rng.normal(size=(32, 8)) / 6), "bias": jnp.zeros(8)}}
    # Megatron-style tensor parallelism: "up" column-wise (output axis over model), "down"
    # row-wise: its input axis, the one its slot (1, 8) averages over, is split over model
    specs = {"up": {"kernel": P(None, "model"), "bias": P("model")},
             "down": {"kernel": P("model", None), "bias": P()}}
    scales = auto_scales(params)
    tx = amos(0.05, scales.eta, scales.slot_shape, momentum=0.9, clip_value=1.0)

    def loss(params, x, y):
        h = jax.nn.relu(x @ params["up"]["kernel"] + params["up"]["bias"])
        return jnp.mean((h @ params["down"]["kernel"] + params["down"]["bias"] - y) ** 2)

    def step(params, state, x, y):
        grads = jax.grad(loss)(params, x, y)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    param_sh = jax.tree.map(lambda s: NamedSharding(mesh, s), specs)
    state_sh = state_sharding(jax.eval_shape(tx.init, params), param_sh)
    batch_sh = NamedSharding(mesh, P("data", None))  # data parallel over the other axis
    sharded = jax.jit(step, in_shardings=(param_sh, state_sh, batch_sh, batch_sh),
                      out_shardings=(param_sh, state_sh))
    plain = jax.jit(step)
    p1, s1 = jax.device_put(params, param_sh), jax.device_put(tx.init(params), state_sh)
    p2, s2 = params, tx.init(params)
    for i in range(20):
        x = jnp.asarray(rng.normal(size=(32, 16)))
        y = jnp.asarray(rng.normal(size=(32, 8)))
        p1, s1 = sharded(p1, s1, jax.device_put(x, batch_sh), jax.device_put(y, batch_sh))
        p2, s2 = plain(p2, s2, x, y)
    error = max(float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))
                for a, b in zip(jax.tree.leaves((p1, s1)), jax.tree.leaves((p2, s2))))
    print(json.dumps({
        "error": error,
        "moved": float(jnp.max(jnp.abs(p2["down"]["kernel"] - params["down"]["kernel"]))),
        "v_down": str(s1[1].v["down"]["kernel"].sharding.spec),
        "v_up": str(s1[1].v["up"]["kernel"].sharding.spec),
        "slot_down": list(s1[1].v["down"]["kernel"].shape),
        "ema_down": str(s1[2].ema["down"]["kernel"].sharding.spec),
    }))
""")


def test_data_and_tensor_parallel_mesh_equals_unsharded():
    report = run_on_4_cpu_devices(SCRIPT_2D)
    assert report["error"] <= 1e-12, report
    assert report["moved"] > 1e-3, report
    assert report["slot_down"] == [1, 8]  # averaged over the axis that "model" splits
    assert report["v_down"] == str(P(None, None))
    assert report["v_up"] == str(P(None, "model"))
    assert report["ema_down"] == str(P("model", None))


def test_row_col_sharded_step_equals_unsharded_on_4_cpu_devices():
    """The column factors take their specs from the parameters' (``u`` of ``w``, (8, 1), is
    split over ``x``) and the sharded run equals the unsharded one."""
    script = SCRIPT.replace("momentum=0.9, clip_value=1.0)",
                            "momentum=0.9, clip_value=1.0, second_moment='row-col')")
    script = script.replace('"v_w_devices"', '"u_w": str(s1[1].u["w"].sharding.spec), '
                            '"u_emb": str(s1[1].u["emb"].sharding.spec), "v_w_devices"')
    assert script.count("row-col") == 1 and "u_emb" in script
    report = run_on_4_cpu_devices(script)
    assert report["error"] <= 1e-12, report
    assert report["moved"] > 1e-2, report
    assert report["u_w"] == str(P("x", None))
    assert report["u_emb"] == str(P(None, None))
