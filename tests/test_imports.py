"""The package's import structure: no cycles among module-level imports, and the lower layers
never import the upper ones (faces < data < training; models, losses, metrics below training)."""
import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "age_jax")

# A module under the first prefix may not import one under any of the others.
FORBIDDEN = {
    "age_jax.faces": ("age_jax.data", "age_jax.models", "age_jax.train", "age_jax.evaluate",
                      "age_jax.predict"),
    "age_jax.data": ("age_jax.models", "age_jax.train", "age_jax.evaluate", "age_jax.predict"),
    "age_jax.models": ("age_jax.data", "age_jax.train", "age_jax.faces", "age_jax.evaluate"),
    "age_jax.losses": ("age_jax.data", "age_jax.models", "age_jax.train"),
    "age_jax.metrics": ("age_jax.data", "age_jax.models", "age_jax.train"),
    "age_jax.train": ("age_jax.evaluate", "age_jax.predict", "age_jax.export", "age_jax.webapp"),
    "age_jax.ages": ("age_jax",),   # the bottom layer: ages, groups, label codes
}


def _modules():
  for folder, _, files in os.walk(PACKAGE):
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


def test_the_checker_sees_imports():
  graph = _graph(top_level_only=True)
  assert "age_jax.faces.align" in graph["age_jax.faces.canonical"]
  assert "age_jax.losses" in graph["age_jax.formulations"]
