"""The package's import structure: no cycles among module-level imports, the lower layers
never import the upper ones (faces < data < training < inference < evaluation; models, losses,
metrics below training), every top-level module has a rule saying what it may import (MAY_IMPORT;
config.py only the registries it validates names against), the rules themselves form layers (no
two top-level modules may import each other, so every upward import is forbidden), inside
age_jax/inference each module imports only those below it (INFERENCE_ORDER), and the CPU corner (age_jax/cpu) stays in its corner: only
the model registry's get_lowering imports it, for a CPU lowering, and it imports nothing of the
package but models.layers."""
import ast
import os
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "age_jax")
CPU = "age_jax.cpu"
CPU_GATE = "age_jax.models"         # models.get_lowering, the one way into the CPU corner
CPU_MAY_IMPORT = ("age_jax.models.layers",)  # the layer interface the CPU lowerings plug into

# A module under the first prefix may not import one under any of the others.
INFERENCE = "age_jax.inference"
FORBIDDEN = {
    "age_jax.faces": ("age_jax.data", "age_jax.models", "age_jax.train", "age_jax.evaluate", INFERENCE),
    "age_jax.data": ("age_jax.models", "age_jax.train", "age_jax.evaluate", INFERENCE),
    "age_jax.models": ("age_jax.data", "age_jax.train", "age_jax.faces", "age_jax.evaluate", INFERENCE),
    "age_jax.losses": ("age_jax.data", "age_jax.models", "age_jax.train", INFERENCE),
    "age_jax.metrics": ("age_jax.data", "age_jax.models", "age_jax.train", INFERENCE),
    "age_jax.ages": ("age_jax",),   # the bottom layer: ages, groups, label codes
    "age_jax.train": ("age_jax.evaluate", INFERENCE, "age_jax.faeb_benchmark"),
    # Inference restores and predicts; evaluation (reports on labelled data) and the FAEB protocol sit above it.
    INFERENCE: ("age_jax.evaluate", "age_jax.faeb_benchmark", "age_jax.preflight"),
}
# The shared inference rules sit just above ages: training-side code and both exports import them.
RULES, RULES_MAY_IMPORT = "age_jax.inference_rules", ("age_jax.ages",)


def _modules(top=PACKAGE):
  for folder, _, files in os.walk(top):
    for name in files:
      if name.endswith(".py"):
        path = os.path.join(folder, name)
        dotted = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
        yield dotted.removesuffix(".__init__"), path


def _imports(path, module, names, top_level_only):
  tree = ast.parse(open(path).read())
  nodes = tree.body if top_level_only else ast.walk(tree)
  out = set()
  for node in nodes:
    if isinstance(node, ast.Import):
      out |= {a.name for a in node.names if a.name.startswith("age_jax")}
    elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("age_jax"):
      for a in node.names:   # `from age_jax.x import y` imports the module age_jax.x.y when it is one
        out.add(f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in names else node.module)
  return {m for m in out if m != module}


def _graph(top_level_only):
  modules = dict(_modules())
  return {m: _imports(p, m, modules, top_level_only) & set(modules) for m, p in modules.items()}


def _under(module, prefix):
  return module == prefix or module.startswith(prefix + ".")


def test_module_level_imports_have_no_cycle():
  graph = _graph(top_level_only=True)
  state, stack = {}, []

  def visit(m):
    state[m] = "open"
    stack.append(m)
    for n in sorted(graph[m]):
      if state.get(n) == "open":
        raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(n):] + [n]))
      if n not in state:
        visit(n)
    stack.pop()
    state[m] = "done"

  for m in sorted(graph):
    if m not in state:
      visit(m)


def test_lower_layers_do_not_import_upper_ones():
  bad = []
  for module, imported in _graph(top_level_only=False).items():  # function-level imports count too
    for layer, above in FORBIDDEN.items():
      if module == layer or module.startswith(layer + "."):
        bad += [f"{module} imports {m}" for m in imported if any(m == a or m.startswith(a + ".") for a in above)]
  assert not bad, "\n".join(sorted(bad))


def test_only_the_model_registry_imports_the_cpu_corner_and_only_when_asked():
  package = dict(_modules())
  everything = {**package, **dict(_modules(os.path.join(ROOT, "launch")))}  # the launchers too
  bad = []
  for module, path in everything.items():
    if _under(module, CPU):
      continue
    for m in _imports(path, module, package, top_level_only=False):
      if _under(m, CPU) and not (module == CPU_GATE and m == CPU):
        bad.append(f"{module} imports {m}")
  if CPU in _imports(package[CPU_GATE], CPU_GATE, package, top_level_only=True):
    bad.append(f"{CPU_GATE} imports {CPU} at module level: importing the models would load the CPU kernels")
  assert not bad, "\n".join(sorted(bad))


def test_the_cpu_corner_imports_only_the_layer_interface():
  bad = [f"{module} imports {m}" for module, imported in _graph(top_level_only=False).items() if _under(module, CPU)
         for m in imported if not _under(m, CPU) and m not in CPU_MAY_IMPORT]
  assert not bad, "\n".join(sorted(bad))


def test_xla_lowering_and_auto_off_the_cpu_never_load_the_cpu_corner():
  # A fresh interpreter: what get_model and a model's init load, and who sets the cache-key option.
  script = textwrap.dedent("""
      import sys
      import jax, jax.numpy as jnp
      from age_jax import config as config_lib, models

      def cpu_corner_loaded():
        return any(m == "age_jax.cpu" or m.startswith("age_jax.cpu.") for m in sys.modules)

      def build(lowering):
        cfg = config_lib.default_config().model
        cfg.name, cfg.conv_lowering = "resnet18", lowering
        model = models.get_model(cfg, 1)
        jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
        return models.get_lowering(lowering)

      assert build("xla").compiler_options is None and not cpu_corner_loaded()
      cpu_backend = jax.default_backend
      jax.default_backend = lambda: "gpu"  # 'auto' on an accelerator
      assert build("auto").name == "xla" and not cpu_corner_loaded()
      assert not jax.config.jax_remove_custom_partitioning_ptr_from_cache_key
      jax.default_backend = cpu_backend
      lowering = build("auto")  # on the CPU: the corner loads, and sets what its oneDNN ops need
      assert cpu_corner_loaded() and lowering.name in ("onednn", "hybrid")
      assert jax.config.jax_remove_custom_partitioning_ptr_from_cache_key == (lowering.name == "onednn")
      """)
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]


def test_the_checker_sees_imports():
  graph = _graph(top_level_only=True)
  assert "age_jax.faces.align" in graph["age_jax.faces.canonical"]
  assert "age_jax.losses" in graph["age_jax.formulations"]
  assert "age_jax.cpu.onednn" in graph["age_jax.cpu.lowerings"]
  assert CPU in _graph(top_level_only=False)[CPU_GATE] - graph[CPU_GATE]  # a function-level import


# Every top-level module or package of age_jax and the top-level modules it may import (function-level
# imports included). A module missing here fails test_every_top_level_module_has_a_rule: a new module
# states where it sits. The inference package sits on training (it restores and runs the predict step);
# evaluation and the FAEB protocol sit on top.
BELOW_TRAIN = {"ages", "losses", "fds", "metrics", "formulations", "storage", "locks", "distributed", "stages",
               "checkpoint", "faces", "models", "cpu", "data", "config", "objective", "conformal", "report",
               "versions", "pod_types", "inference_rules"}
MAY_IMPORT = {
    "ages": set(),
    "inference_rules": {"ages"},   # preprocessing, decoders, intervals: one implementation (test below)
    "losses": {"ages", "inference_rules"},
    "metrics": {"ages"},
    "fds": {"losses"},   # feature distribution smoothing's statistics and calibration (DIR)
    "formulations": {"ages", "fds", "losses", "inference_rules"},
    "storage": set(), "locks": set(), "distributed": set(), "stages": set(),
    "versions": set(), "pod_types": set(),   # the tested JAX range; TPU pod types and their device counts
    "checkpoint": {"storage"},
    "faces": set(),
    "models": {"ages", "losses", "cpu", "storage"},   # cpu only through get_lowering (tests above)
    "cpu": {"models"},                     # models.layers only (tests above)
    "data": {"ages", "faces", "inference_rules", "locks", "storage"},
    "config": {"data", "formulations", "models", "stages", "storage"},   # see CONFIG_MAY_IMPORT
    "objective": {"fds", "formulations", "losses", "models"},
    "conformal": {"ages", "inference_rules", "metrics", "storage"},
    "report": {"metrics", "storage"},
    "train": BELOW_TRAIN,
    "inference": BELOW_TRAIN | {"train"},               # restore, predictor, intervals applied, export, web page
    "evaluate": BELOW_TRAIN | {"train", "inference"},   # restores through inference, reports on labelled data
    "preflight": BELOW_TRAIN | {"train"},                  # checks before a cluster run
    "faeb_benchmark": BELOW_TRAIN | {"train", "evaluate"},  # FAEB's protocol: trains and evaluates
}
# The CPU corner and the model registry import each other, one way through get_lowering only (tests above).
MUTUAL_EXCEPTIONS = {frozenset({"models", "cpu"})}

# Inside age_jax/inference, bottom first: a module imports only those before it. A new module states
# its place here.
INFERENCE_ORDER = ("uploads", "restore", "intervals", "predict", "export_jax", "jaxpr_onnx", "symbolic_pooling",
                   "export_onnx", "export_faces", "pasted_faces", "photo_calibration", "webapp")

# config.py names things and validates the names against the registries that resolve them; it never
# imports what runs them (builders, pipeline, objective, training, inference). Today it looks names up
# in these registries directly; once each registry validates its own names, this list should shrink.
CONFIG_MAY_IMPORT = ("age_jax.formulations", "age_jax.storage", "age_jax.stages", "age_jax.models",
                     "age_jax.models.layers", "age_jax.models.multitask", "age_jax.models.weights_hub",
                     "age_jax.data.augment",
                     "age_jax.data.samplers")


def _top(module):
  return module.split(".")[1] if module.count(".") else None


def test_every_top_level_module_has_a_rule():
  tops = {_top(m) for m in dict(_modules()) if _top(m)}
  assert tops <= set(MAY_IMPORT), f"top-level modules without a rule in MAY_IMPORT: {sorted(tops - set(MAY_IMPORT))}"


def test_top_level_modules_import_only_what_their_rule_allows():
  bad = []
  for module, imported in _graph(top_level_only=False).items():
    here = _top(module)
    for m in imported:
      there = _top(m)
      if there and there != here and there not in MAY_IMPORT.get(here, set()):
        bad.append(f"{module} imports {m}")
  assert not bad, "\n".join(sorted(bad))


def test_config_imports_only_the_registries_it_validates_names_against():
  config = _graph(top_level_only=False)["age_jax.config"]
  assert config, "the checker found no imports in config.py"
  bad = sorted(m for m in config if m not in CONFIG_MAY_IMPORT)
  assert not bad, f"config.py imports {bad}: config names things, the registries resolve them"


def test_the_rules_catch_an_upward_import(tmp_path):
  # The checker on a made-up module: a loss importing the train layer is reported.
  fake = tmp_path / "losses.py"
  fake.write_text("from age_jax.train import loop\n")
  modules = {**dict(_modules()), "age_jax.train.loop": ""}
  imported = _imports(str(fake), "age_jax.losses", modules, top_level_only=False)
  assert "age_jax.train.loop" in imported and _top("age_jax.train.loop") not in MAY_IMPORT["losses"]


def test_the_inference_rules_import_nothing_above_ages():
  graph = _graph(top_level_only=False)
  assert graph[RULES] <= set(RULES_MAY_IMPORT), sorted(graph[RULES] - set(RULES_MAY_IMPORT))
  users = {m for m, imported in graph.items() if RULES in imported}
  assert {"age_jax.losses", "age_jax.formulations", "age_jax.conformal", "age_jax.inference.export_jax",
          "age_jax.data.pipeline", "age_jax.data.augment"} <= users  # one implementation, used on both sides


def _layer_order(rules, exceptions=frozenset()):
  """The rules' modules bottom first; AssertionError naming a cycle when the rules allow one."""
  allowed = {m: {n for n in may if n != m and frozenset({m, n}) not in exceptions} for m, may in rules.items()}
  order, state = [], {}

  def visit(m, path):
    if state.get(m) == "open":
      raise AssertionError("the rules allow a cycle: " + " -> ".join(path[path.index(m):] + [m]))
    if m in state:
      return
    state[m] = "open"
    for n in sorted(allowed.get(m, ())):
      visit(n, path + [m])
    state[m] = "done"
    order.append(m)

  for m in sorted(allowed):
    visit(m, [])
  return order


def test_the_rules_form_layers():
  # Allowed imports between top-level modules have no cycle: whatever a module may import may not
  # import it back, directly or through others, so every upward import is forbidden by some rule.
  order = _layer_order(MAY_IMPORT, MUTUAL_EXCEPTIONS)
  assert order.index("faces") < order.index("data") < order.index("train") < order.index("inference") \
      < order.index("evaluate") < order.index("faeb_benchmark")
  with pytest.raises(AssertionError, match="cycle: a -> b -> c -> a"):   # the check catches a cycle
    _layer_order({"a": {"b"}, "b": {"c"}, "c": {"a"}})


def test_nothing_below_inference_imports_it():
  graph = _graph(top_level_only=False)
  below = [m for m in graph if any(_under(m, f"age_jax.{layer}") for layer in BELOW_TRAIN | {"train"})]
  bad = [f"{m} imports {n}" for m in below for n in graph[m] if _under(n, INFERENCE)]
  assert not bad, "\n".join(sorted(bad))


def test_inside_inference_each_module_imports_only_those_below_it():
  graph = _graph(top_level_only=False)
  inside = {m: imported for m, imported in graph.items() if _under(m, INFERENCE) and m != INFERENCE}
  names = {m: m.split(".")[2] for m in inside}
  assert set(names.values()) <= set(INFERENCE_ORDER), \
      f"inference modules without a place in INFERENCE_ORDER: {sorted(set(names.values()) - set(INFERENCE_ORDER))}"
  bad = []
  for m, imported in inside.items():
    for n in imported:
      if _under(n, INFERENCE) and n != INFERENCE and \
          INFERENCE_ORDER.index(n.split(".")[2]) >= INFERENCE_ORDER.index(names[m]):
        bad.append(f"{m} imports {n}, which is not below it in INFERENCE_ORDER")
  assert not bad, "\n".join(sorted(bad))
  assert "age_jax.inference.restore" in inside["age_jax.inference.predict"]  # the checker sees them
