"""Plugins: a user's physics, prior or scheme from a YAML file alone (``plugins:``, ``--trust-code``) through
train, restore, eval, compare-grads, show and the Python API; installed plugins (entry points); declared
options; errors in user code as one line; and the testing kit (``retune_cli.testing``) on the example plugin,
the built-in components and deliberately broken ones."""

from __future__ import annotations

import json
import sys
import textwrap
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest
import torch
import yaml
from reliability import invoke, ok, one_line_error

import retune_cli
from retune_cli import checkpoint as ckpt
from retune_cli import components, testing
from retune_cli.config import from_yaml, resolve, with_overrides
from retune_cli.core.operators import build_physics
from retune_cli.core.physics import PHYSICS
from retune_cli.core.prior import PRIORS
from retune_cli.core.scheme import SCHEMES, SPECIALIZED
from retune_cli.core.wavelet_prior import WaveletPrior
from retune_cli.degradations import degradation_key
from retune_cli.errors import InputError
from retune_cli.extend import ComposedScheme, NormBounds, Physics, Prior, register_pytree
from retune_cli.models import build_scheme, physics_from

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "denoise-smooth.yaml"
PLUGIN = REPO / "examples" / "smooth_prior.py"
TINY = ["--steps", "1", "--crop", "32", "--batch-size", "1", "--K", "1", "--T", "1", "--device", "cpu"]
TINY_KEYS = {"train.crop": 32, "train.batch_size": 1, "train.K": 1, "train.T": 1, "train.steps": 1}
QUADRATIC = lambda z: 0.5 * sum(torch.sum(b**2) for b in z)  # noqa: E731  (h of the example: g = h(√θ ∇x))


@pytest.fixture(scope="module", autouse=True)
def _registries():
    """What this module's plugins register is removed afterwards (other modules see the built-ins only)."""
    components.load_components()
    saved = [dict(PHYSICS), dict(PRIORS), dict(SCHEMES), dict(SPECIALIZED), set(components._plugins)]
    yield
    for registry, before in zip((PHYSICS, PRIORS, SCHEMES, SPECIALIZED, components._plugins), saved):
        registry.clear()
        registry.update(before)


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch):
    monkeypatch.setenv("RETUNE_THREADS", "1")


@pytest.fixture(scope="module")
def smooth_run(tmp_path_factory, image_folder) -> Path:
    """One step of the example, run from another folder than the YAML's: its plugin is found beside it."""
    root = tmp_path_factory.mktemp("smooth")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        ok(invoke("train", "--preset", EXAMPLE, "--trust-code", *TINY, "--data", image_folder, "--out", root / "run"))
    return root / "run"


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


def preset(folder: Path, plugins: list[str], physics: dict | None = None, model: dict | None = None) -> Path:
    data = {"plugins": plugins, "physics": physics or {"name": "denoise", "sigma": [0.1]},
            "model": model or {"prior": "smooth"}, "train": {"crop": 32}}
    return write(folder, "preset.yaml", yaml.safe_dump(data))


# --------------------------------------------------------------------------- the example, from YAML alone


def test_the_example_plugin_through_every_command(smooth_run, image_folder, tmp_path):
    checkpoint = smooth_run / "theta.safetensors"
    stored = yaml.safe_load((smooth_run / "config.yaml").read_text())
    assert stored["plugins"] == [str(PLUGIN)] and stored["model"]["prior"] == "smooth"
    assert stored["model"]["smoothness"] == 1.0  # the prior's declared option, flat as in the preset
    assert "PSNR" in ok(invoke("restore", checkpoint, image_folder / "im0.png", "--simulate", "--trust-code",
                               "-o", tmp_path / "out.png", "--device", "cpu")).output
    ok(invoke("eval", checkpoint, "--data", image_folder, "--trust-code", "--json", tmp_path / "e.json",
              "--device", "cpu"))
    assert len(json.loads((tmp_path / "e.json").read_text())["rows"]) == 3
    shown = ok(invoke("show", checkpoint, "--trust-code")).output
    assert "θ_c (smoothness per channel)" in shown and "smooth fb, smoothness 1.0" in shown
    ok(invoke("compare-grads", "--checkpoint", checkpoint, "--trust-code", "--crop", "16", "--K", "1", "--T", "1",
              "--device", "cpu", "--json", tmp_path / "g.json"))
    rows = json.loads((tmp_path / "g.json").read_text())["rows"]
    assert all(r["rel_err_fd"] < 1e-4 for r in rows if r["method"] == "deq")
    ok(invoke("train", "--resume", checkpoint, "--steps", "2", "--trust-code", "--device", "cpu"))


def test_the_example_is_refused_without_trust_code(smooth_run, image_folder, tmp_path):
    one_line_error(invoke("train", "--preset", EXAMPLE, *TINY, "--out", tmp_path / "r"), "smooth_prior.py",
                   "--trust-code")
    assert not (tmp_path / "r").exists()
    checkpoint = smooth_run / "theta.safetensors"
    for args in (("restore", checkpoint, image_folder / "im0.png", "--simulate", "-o", tmp_path / "o.png"),
                 ("eval", checkpoint, "--data", image_folder, "--device", "cpu"), ("show", checkpoint),
                 ("compare-grads", "--checkpoint", checkpoint, "--crop", "16", "--K", "1", "--T", "1"),
                 ("train", "--resume", checkpoint, "--steps", "3")):
        one_line_error(invoke(*args), str(PLUGIN), "--trust-code")


def test_nothing_is_imported_without_trust_code(image_folder, tmp_path):
    write(tmp_path, "marked.py", f"""
        from pathlib import Path
        Path(__file__).with_name("imported.marker").write_text("ran")
        exec(open({str(PLUGIN)!r}).read().replace('"smooth"', '"marked"'))
        """)
    path = preset(tmp_path, ["marked.py"], model={"prior": "marked"})
    one_line_error(invoke("train", "--preset", path, *TINY, "--out", tmp_path / "r"), "marked.py", "--trust-code")
    assert not (tmp_path / "imported.marker").exists()
    ok(invoke("train", "--preset", path, "--trust-code", *TINY, "--data", image_folder, "--out", tmp_path / "r"))
    assert (tmp_path / "imported.marker").is_file()


def test_the_python_api(smooth_run, image_folder, tmp_path):
    with pytest.raises(InputError, match="--trust-code"):
        retune_cli.fit(str(EXAMPLE), image_folder, out=tmp_path / "api", overrides=TINY_KEYS)
    restorer = retune_cli.fit(str(EXAMPLE), image_folder, out=tmp_path / "api", overrides=TINY_KEYS, trust_code=True)
    assert restorer(torch.rand(3, 20, 24)).shape == (3, 20, 24)
    assert type(restorer.scheme.theta).__name__ == "SmoothPrior"
    with pytest.raises(InputError, match="trust_code=True"):
        retune_cli.load(smooth_run / "theta.safetensors")
    assert retune_cli.load(smooth_run / "theta.safetensors", trust_code=True, sigma=0.2)(torch.rand(3, 16, 16)).shape \
        == (3, 16, 16)


@pytest.mark.filterwarnings("ignore:train PSNR")  # one step barely learns: fit says so
def test_the_readme_plugin_works(image_folder, tmp_path):
    """README's "Write your own": its prior and YAML as written, trained one step from Python and checked."""
    readme = (REPO / "README.md").read_text().split("## Write your own", 1)[1]
    for name in ("my_prior.py", "my-ridge.yaml"):
        block = readme.split(f"# {name}\n", 1)[1].split("```", 1)[0]
        (tmp_path / name).write_text(block)
    restorer = retune_cli.fit(str(tmp_path / "my-ridge.yaml"), image_folder, out=tmp_path / "run",
                              overrides=TINY_KEYS, trust_code=True)
    assert restorer.config.model.options == {"strength": 0.2}
    assert [c.name for c in testing.check_prior(restorer.scheme.theta)] == ["prox"]


# --------------------------------------------------------------------------- a physics, a prior and a scheme

GAIN_PHYSICS = """
    from retune_cli.extend import NormBounds, Physics, register_physics

    @register_physics
    class Gain(Physics):
        name = "gain"
        options = {"gain": 2.0}  # physics.gain, a new key with its default
        injective = True

        def __init__(self, sigma, gain=2.0):
            super().__init__(sigma)
            self.gain = gain

        def A(self, x, params=None):
            return self.gain * x

        A_adjoint = A

        def norm_bounds(self, like, params=None):
            return NormBounds(abs(self.gain), abs(self.gain))

        def prox_data(self, z, y, tau, params=None):
            return (z + tau * self.gain * y) / (1 + tau * self.gain**2)
    """
RELAXED_SCHEME = """
    from retune_cli.extend import ComposedScheme, register_scheme

    @register_scheme("relaxed")
    class Relaxed(ComposedScheme):
        '''x⁺ = x + ρ (prox_τg(x − τ Aᵀ(Ax − y)) − x).'''

        options = {"relaxation": 0.5}

        def __init__(self, physics, prior, relaxation=0.5):
            super().__init__(physics, prior)
            self.relaxation = relaxation

        def step(self, x, ctx):
            z = x - ctx.tau * (self.normal(x, ctx.size, ctx.params) - ctx.aty)
            return x + self.relaxation * (self.theta.prox(z, ctx.tau) - x)
    """


@pytest.fixture(scope="module")
def three_plugins(tmp_path_factory) -> Path:
    """A preset whose physics, prior and scheme all come from plugins (a file, a file elsewhere, a module)."""
    folder = tmp_path_factory.mktemp("three")
    write(folder, "gain_physics.py", GAIN_PHYSICS)
    (folder / "userpkg").mkdir()
    write(folder / "userpkg", "__init__.py", "")
    write(folder / "userpkg", "relaxed.py", RELAXED_SCHEME)
    sys.path.insert(0, str(folder))
    yield preset(folder, ["gain_physics.py", str(PLUGIN), "userpkg.relaxed"],
                 physics={"name": "gain", "sigma": [0.05], "gain": 0.5},
                 model={"prior": "smooth", "scheme": "relaxed", "relaxation": 0.8, "smoothness": 0.3, "init": "paper"})
    sys.path.remove(str(folder))


def test_physics_prior_and_scheme_plugins_with_their_options(three_plugins, image_folder, tmp_path):
    config = resolve(str(three_plugins), trust_code=True)
    assert config.physics.options == {"gain": 0.5} and config.physics.gain == 0.5
    assert config.model.options == {"relaxation": 0.8, "smoothness": 0.3}
    scheme = build_scheme(config)
    assert scheme.physics.gain == 0.5 and scheme.relaxation == 0.8
    assert torch.allclose(torch.exp(scheme.theta.log_theta), torch.tensor(0.3))
    assert degradation_key(config.physics)[1] == (("gain", 0.5),)
    again = from_yaml(config.to_yaml(), "stored", trust_code=True)
    assert again == config and "gain: 0.5" in config.to_yaml()
    changed = with_overrides(config, {"physics.gain": 0.25, "model.relaxation": 0.6}, "--set")
    assert (changed.physics.gain, changed.model.options["relaxation"]) == (0.25, 0.6)
    out = tmp_path / "run"
    ok(invoke("train", "--preset", three_plugins, "--trust-code", *TINY, "--data", image_folder, "--out", out))
    ok(invoke("restore", out / "theta.safetensors", image_folder / "im0.png", "--simulate", "--trust-code",
              "-o", tmp_path / "o.png", "--device", "cpu"))
    testing.check_physics(physics_from(config))
    testing.check_scheme(scheme)


def test_declared_options_are_checked(three_plugins, tmp_path):
    data = yaml.safe_load(three_plugins.read_text())
    data["plugins"] = [str(three_plugins.parent / p) if p.endswith(".py") and "/" not in p else p
                       for p in data["plugins"]]
    cases = [("physics", "gian", 1.0,
              "unknown key physics.gian; known: blur_width, boundary, factor, factory, filter, gain"),
             ("physics", "gain", "loud", "physics.gain must be a float"),
             ("model", "relaxaton", 1.0, "unknown key model.relaxaton"),
             ("model", "smoothness", [1], "model.smoothness must be a float")]
    for section, key, value, message in cases:
        bad = yaml.safe_load(yaml.safe_dump(data))
        bad[section][key] = value
        with pytest.raises(InputError, match=message.replace(".", r"\.")):
            resolve(str(write(tmp_path, "bad.yaml", yaml.safe_dump(bad))), trust_code=True)
    default = resolve(str(three_plugins), {"physics.name": "gain"}, trust_code=True)
    assert default.physics.gain == 0.5
    del data["physics"]["gain"]
    assert resolve(str(write(tmp_path, "d.yaml", yaml.safe_dump(data))), trust_code=True).physics.gain == 2.0


def test_missing_plugins_are_named(tmp_path):
    one_line_error(invoke("train", "--preset", preset(tmp_path, ["nope.py"]), "--trust-code", *TINY),
                   "plugin nope.py is missing", str(tmp_path / "nope.py"))
    one_line_error(invoke("train", "--preset", preset(tmp_path, ["no_such_module_xyz.plugin"]), "--trust-code", *TINY),
                   "cannot import no_such_module_xyz.plugin")
    one_line_error(invoke("train", "--preset", preset(tmp_path, ["not a module"]), "--trust-code", *TINY),
                   "neither a .py file nor a module name")
    moved = write(tmp_path, "moved.py", PLUGIN.read_text())
    config = resolve(str(preset(tmp_path, ["moved.py"])), TINY_KEYS, trust_code=True)
    checkpoint = tmp_path / "theta.safetensors"
    ckpt.save(checkpoint, config, ckpt.learned_parameters(build_scheme(config)), 1, 0.0)
    moved.unlink()
    one_line_error(invoke("show", checkpoint, "--trust-code"), f"plugin {moved} is missing")


# --------------------------------------------------------------------------- errors in user code

BROKEN = {
    "syntax": ("def broken(:\n", "line 1: SyntaxError"),
    "import": ("import retune_cli\nVALUE = 1 / 0\n", "line 2, in <module>: ZeroDivisionError"),
    "dependency": ("import no_such_dependency_xyz\n", "line 1, in <module>: ModuleNotFoundError"),
    "constructor": (PLUGIN.read_text().replace('"smooth"', '"fragile"').replace(
        "        super().__init__()\n", "        super().__init__()\n        {}['missing']\n"),
        "in SmoothPrior.__init__: KeyError: 'missing'"),
    "prox": (PLUGIN.read_text().replace('"smooth"', '"failing"').replace(
        "        damping = 1", "        raise RuntimeError('prox failed')\n        damping = 1"),
        "in SmoothPrior.prox: RuntimeError: prox failed"),
}


@pytest.mark.parametrize("case", BROKEN)
def test_errors_in_plugin_code_are_one_line_naming_file_and_function(case, image_folder, tmp_path):
    source, fragment = BROKEN[case]
    plugin = write(tmp_path, f"{case}_plugin.py", source)
    prior = {"constructor": "fragile", "prox": "failing"}.get(case, "smooth")
    path = preset(tmp_path, [plugin.name], model={"prior": prior})
    line = one_line_error(invoke("train", "--preset", path, "--trust-code", *TINY, "--data", image_folder,
                                 "--out", tmp_path / "r"), str(plugin), fragment)
    assert "Traceback" not in line


def test_installed_plugins_load_from_entry_points(monkeypatch, tmp_path):
    """A package declaring ``[project.entry-points."retune.plugins"] name = "module"`` is imported with the
    built-ins: its components are available without plugins: or --trust-code; a broken one is named."""
    write(tmp_path, "retune_ep_demo.py", PLUGIN.read_text().replace('"smooth"', '"ep-smooth"'))
    write(tmp_path, "retune_ep_broken.py", "raise ImportError('needs a GPU library')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    installed = [EntryPoint("demo", "retune_ep_demo", components.ENTRY_POINTS)]
    monkeypatch.setattr(components, "entry_points", lambda group: installed if group == components.ENTRY_POINTS else [])
    monkeypatch.setattr(components, "_loaded", False)
    assert "ep-smooth" in components.prior_names()
    config = resolve("denoise-wavelet-b", {"model.prior": "ep-smooth", "model.smoothness": 0.4, **TINY_KEYS})
    assert config.plugins == [] and build_scheme(config).theta.name == "ep-smooth"
    installed.append(EntryPoint("broken", "retune_ep_broken", components.ENTRY_POINTS))
    monkeypatch.setattr(components, "_loaded", False)
    one_line_error(invoke("train", *TINY), "installed plugin broken", "retune_ep_broken.py line 1",
                   "ImportError: needs a GPU library")


# --------------------------------------------------------------------------- the testing kit


@pytest.mark.parametrize(("name", "options"), [("denoise", {}), ("inpaint", {"keep": 0.3}),
                                               ("deblur", {"blur_width": 5}),
                                               ("deblur", {"kernel": "gaussian", "kernel_size": 5})])
def test_the_kit_passes_the_builtin_physics(name, options):
    checks = testing.check_physics(build_physics(name, [0.1], **options))
    assert [c.name for c in checks] == ["adjoint", "normal", "norm_bounds", "prox_data"]
    assert all(c.passed for c in checks) and "ok adjoint" in str(checks[0])


def test_the_kit_passes_the_wavelet_prior_the_example_and_their_schemes():
    assert [c.name for c in testing.check_prior(WaveletPrior(levels=2, init_lambda=0.1))] == ["prox"]
    components.load_plugins([str(PLUGIN)])
    checks = testing.check_prior(PRIORS["smooth"](0.7), h=QUADRATIC)
    assert [c.name for c in checks] == ["prox", "analysis adjoint", "analysis norm", "conjugate prox"]
    wavelet = build_scheme(resolve("denoise-wavelet-b", {"model.levels": 2, "train.crop": 32}))
    assert [c.name for c in testing.check_scheme(wavelet)] == ["iterate", "contraction", "gradient"]
    smooth = {scheme: build_scheme(resolve(str(EXAMPLE), {"physics.name": "inpaint", "physics.keep": 0.5,
                                                          "model.scheme": scheme, "model.step_rule": "safe",
                                                          "train.crop": 32}, trust_code=True))
              for scheme in ("fb", "pd")}
    assert all(c.passed for c in testing.check_scheme(smooth["fb"], K=2, side=16))
    obs, _ = testing.tiny_problem(smooth["pd"].physics, side=16)
    assert "all 2 leaves" in str(testing.check_iterate(smooth["pd"], obs))  # the primal–dual pair (x, z)


class PerImageGain(Physics):
    """``A x_i = g_i x_i`` with a gain drawn per image, and ‖A‖ of the first image only (a classic slip)."""

    name = "per-image-gain"

    def draw(self, shape, seed):
        return {"gain": torch.tensor([1.0, 3.0])[: shape[0]].view(-1, 1, 1, 1)}

    def A(self, x, params=None):
        return params["gain"].to(x) * x

    A_adjoint = A

    def norm_bounds(self, like, params=None):
        return NormBounds(float(params["gain"][0]), 0.0)


class WrongAdjoint(PerImageGain):
    name = "wrong-adjoint"

    def A_adjoint(self, y, params=None):
        return y.flip(-1)

    def norm_bounds(self, like, params=None):
        return NormBounds(3.0, 0.0)


class WrongProx(Prior):
    """``value`` is ``‖x‖²/2`` but ``prox`` that of ``‖x‖²`` (θ detached from it as well)."""

    name = "wrong-prox"

    def __init__(self):
        super().__init__()
        self.log_w = torch.nn.Parameter(torch.zeros(1))

    def prox(self, x, tau):
        return x / (1 + 2 * tau * torch.exp(self.log_w.detach()))

    def value(self, x):
        return 0.5 * torch.exp(self.log_w) * torch.sum(x**2)


class Pair(tuple):
    """An iterate of two images whose second one nothing reads."""


register_pytree(Pair, list, lambda ts: Pair(ts))


class DeadLeaf(ComposedScheme):
    name = "dead-leaf"

    def init(self, ctx):
        return Pair((ctx.aty, torch.zeros_like(ctx.aty)))

    def step(self, u, ctx):
        return Pair((self.theta.prox(ctx.aty, ctx.tau), u[1]))

    def output(self, u, ctx):
        return u[0]


def test_the_kit_names_what_is_broken():
    with pytest.raises(testing.ContractError, match=r"FAILED norm_bounds: ‖A‖ ≤ 1 over the batch.*: 3\)"):
        testing.check_physics(PerImageGain([0.1]))
    with pytest.raises(testing.ContractError, match="FAILED adjoint"):
        testing.check_adjoint(WrongAdjoint([0.1]))
    with pytest.raises(testing.ContractError, match="FAILED prox: .*lower at q"):
        testing.check_prior(WrongProx())
    denoise = build_physics("denoise", [0.1])
    scheme = DeadLeaf(denoise, WrongProx())
    with pytest.raises(testing.ContractError) as failed:
        testing.check_scheme(scheme, side=8)
    lines = str(failed.value).splitlines()
    assert lines[0].startswith("FAILED iterate: leaves [1] (of 2) change the output neither")
    assert lines[1].startswith("FAILED gradient") and len(lines) == 2  # θ detached: DEQ gives 0, FD does not
