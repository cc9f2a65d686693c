"""The package's import structure: no cycles among module-level imports, the lower layers
never import the upper ones (faces < data < training; models, losses, metrics below training),
and the CPU corner (age_jax/cpu) stays in its corner: only the model registry's get_lowering
imports it, for a CPU lowering, and it imports nothing of the package but models.layers."""
import ast
import os
import subprocess
import sys
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "age_jax")
CPU = "age_jax.cpu"
CPU_GATE = "age_jax.models"         # models.get_lowering, the one way into the CPU corner
CPU_MAY_IMPORT = ("age_jax.models.layers",)  # the layer interface the CPU lowerings plug into

# A module under the first prefix may not import one under any of the others.
FORBIDDEN = {
    "age_jax.faces": ("age_jax.data", "age_jax.models", "age_jax.train", "age_jax.evaluate",
                      "age_jax.predict"),
    "age_jax.data": ("age_jax.models", "age_jax.train", "age_jax.evaluate", "age_jax.predict"),
    "age_jax.models": ("age_jax.data", "age_jax.train", "age_jax.faces", "age_jax.evaluate"),
    "age_jax.losses": ("age_jax.data", "age_jax.models", "age_jax.train"),
    "age_jax.metrics": ("age_jax.data", "age_jax.models", "age_jax.train"),
    "age_jax.ages": ("age_jax",),   # the bottom layer: ages, groups, label codes
    "age_jax.train": ("age_jax.evaluate", "age_jax.predict", "age_jax.export", "age_jax.webapp",
                      "age_jax.photo_calibration"),
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


def test_the_inference_rules_import_nothing_above_ages():
  graph = _graph(top_level_only=False)
  assert graph[RULES] <= set(RULES_MAY_IMPORT), sorted(graph[RULES] - set(RULES_MAY_IMPORT))
  users = {m for m, imported in graph.items() if RULES in imported}
  assert {"age_jax.losses", "age_jax.formulations", "age_jax.conformal", "age_jax.export", "age_jax.export_onnx",
          "age_jax.data.pipeline", "age_jax.data.augment"} <= users  # one implementation, used on both sides
