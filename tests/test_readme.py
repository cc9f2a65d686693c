"""README.md's commands, copied from its code blocks, against the tree: every `python -m launch...`
module exists and parses the flags the README gives it (absl and config_flags, in a subprocess per
module, without running main), every script, config and file named exists, the test command is
CI's, the layout names what is there, and the docs' links and commands point at what exists.
The commands that need no trained model and no dataset run for real."""
import functools
import os
import re
import shlex
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
DOCS = [README, os.path.join(ROOT, "BUILD_NOTES.md"), os.path.join(ROOT, "BENCHMARK_RECORDS.md")] + sorted(
    os.path.join(ROOT, "docs", f) for f in os.listdir(os.path.join(ROOT, "docs")) if f.endswith(".md"))


def _read(path):
  with open(path, encoding="utf-8") as f:
    return f.read()


def code_blocks(text):
  """(language, body) of every fenced block."""
  return re.findall(r"^```(\w*)\n(.*?)^```", text, flags=re.S | re.M)


def commands(text):
  """Shell commands of the bash blocks: continuation lines joined, comments dropped, split on &&."""
  out = []
  for lang, body in code_blocks(text):
    if lang != "bash":
      continue
    body = body.replace("\\\n", " ")
    for line in body.splitlines():
      line = line.strip()
      if not line or line.startswith("#"):
        continue
      words = shlex.split(line, comments=True)
      while "&&" in words:
        i = words.index("&&")
        out.append(words[:i])
        words = words[i + 1:]
      if words:
        out.append(words)
  return out


def launcher_calls(words):
  """(module, args) for each `python -m launch.X ...` in a command, the command after a
  local_cluster's `--`, and the training flags tpu_pod.sh and slurm.sbatch pass to launch.train."""
  if "-m" in words and words[words.index("-m") + 1].startswith("launch."):
    i = words.index("-m")
    module, rest = words[i + 1], words[i + 2:]
    if "--" in rest:
      inner = rest[rest.index("--") + 1:]
      return [(module, rest[:rest.index("--")])] + launcher_calls(inner)
    return [(module, rest)]
  if words[:2] == ["bash", "launch/tpu_pod.sh"] and words[2] == "train":
    return [("launch.train", words[3:])]
  if words[:2] == ["sbatch", "launch/slurm.sbatch"]:
    return [("launch.train", words[2:])]
  return []


def _module_path(module):
  base = os.path.join(ROOT, *module.split("."))
  return next((p for p in (base + ".py", os.path.join(base, "__init__.py")) if os.path.exists(p)), None)


@functools.lru_cache(maxsize=None)
def readme_commands():
  return tuple(tuple(c) for c in commands(_read(README)))


def test_the_readme_has_one_example_per_path():
  modules = {m for c in readme_commands() for m, _ in launcher_calls(list(c))}
  assert {"launch.train", "launch.evaluate", "launch.predict", "launch.serve", "launch.export",
          "launch.local_cluster"} <= modules, modules
  scripts = {c[1] for c in readme_commands() if c[0] in ("bash", "sbatch")}
  assert {"launch/quickstart.sh", "launch/tpu_pod.sh", "launch/slurm.sbatch"} <= scripts, scripts
  assert len(_read(README).splitlines()) <= 200


def test_the_readme_test_command_is_ci_s():
  # .ci/run promises to run README.md's test command verbatim.
  ci = _read(os.path.join(ROOT, ".ci", "run")).replace("\\\n", " ")
  ci_command = " ".join(next(line for line in ci.splitlines() if "pytest" in line).split())
  blocks = [" ".join(body.replace("\\\n", " ").split()) for lang, body in code_blocks(_read(README))]
  assert ci_command in blocks, f"README has no block equal to .ci/run's {ci_command!r}"


def test_every_script_config_and_file_named_exists():
  missing = []
  for words in readme_commands():
    for w in words:
      value = w.split("=", 1)[1] if w.startswith("--") and "=" in w else w
      value = value.split(":", 1)[0] if value.startswith("configs/") else value  # configs/x.py:stage
      if re.match(r"^(launch|configs|age_jax|tests|docs)/", value) and not os.path.exists(os.path.join(ROOT, value)):
        missing.append(f"{' '.join(words)}: {value}")
    for module, _ in launcher_calls(list(words)):
      if _module_path(module) is None:
        missing.append(f"{' '.join(words)}: module {module}")
    if words[0] in ("bash", "sbatch") and not os.path.exists(os.path.join(ROOT, words[1])):
      missing.append(" ".join(words))
    if words[:3] == [".venv/bin/pip", "install", "-q"] and "-e" in words:
      extra = re.match(r"^\.\[(\w+)\]$", words[words.index("-e") + 1])
      if extra and not re.search(rf"^{extra.group(1)} = \[", _read(os.path.join(ROOT, "pyproject.toml")), re.M):
        missing.append(f"{' '.join(words)}: no extra {extra.group(1)!r} in pyproject.toml")
  assert not missing, "\n".join(missing)


# Imports one launcher and parses each argument list as absl would (unknown flags, bad values,
# required flags, config files and their overrides), without calling main.
_PARSE = textwrap.dedent("""
    import importlib, json, sys
    from absl import flags
    module, calls = sys.argv[1], json.loads(sys.argv[2])
    importlib.import_module(module)
    failures = []
    for args in calls:
      flags.FLAGS.unparse_flags()
      for name in [n for n in flags.FLAGS if "." in n]:  # the previous config's override flags
        delattr(flags.FLAGS, name)
      sys.argv = [module] + args  # config_flags reads its --config.x overrides from sys.argv
      try:
        rest = flags.FLAGS(sys.argv)
        if len(rest) > 1:
          failures.append(f"{args}: unexpected arguments {rest[1:]}")
      except Exception as e:  # absl's IllegalFlagValueError, UnrecognizedFlagError, config errors
        failures.append(f"{args}: {type(e).__name__}: {e}")
    print(json.dumps(failures))
    """)


# Two calls the README must never contain, parsed with launch.train's: the check must catch both.
_BAD_TRAIN_CALLS = [["--workdir=w", "--no_such_flag=1"],
                    ["--config=configs/quickstart.py", "--workdir=w", "--config.no_such_field=1"]]


def test_every_launcher_call_parses_its_flags():
  import json
  calls = {}
  for words in readme_commands():
    for module, args in launcher_calls(list(words)):
      if module != "launch.local_cluster":  # argparse, not absl: run for real below
        calls.setdefault(module, []).append(args)
  assert {"launch.train", "launch.evaluate", "launch.predict", "launch.serve", "launch.export"} <= set(calls)
  calls["launch.train"] += _BAD_TRAIN_CALLS
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  failures = []
  for module, arg_lists in sorted(calls.items()):
    done = subprocess.run([sys.executable, "-c", _PARSE, module, json.dumps(arg_lists)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{module}: {done.stderr[-2000:]}"
    failures += [f"{module} {f}" for f in json.loads(done.stdout.strip().splitlines()[-1])]
  caught = [f for f in failures if "no_such_flag" in f or "no_such_field" in f]
  assert len(caught) == 2, f"the parser check missed a bad call: {caught}"
  failures = [f for f in failures if f not in caught]
  assert not failures, "\n".join(failures)


def test_the_quickstart_script_runs_and_names_a_missing_folder(tmp_path):
  # The main job's command, for real, up to its first check (before any set-up or training).
  words = next(c for c in readme_commands() if c[:2] == ("bash", "launch/quickstart.sh"))
  folder = str(tmp_path / "no_utkface_here")
  done = subprocess.run(["bash", words[1], folder], cwd=ROOT, capture_output=True, text=True, timeout=60)
  assert done.returncode == 2 and folder in done.stderr, done.stderr


def test_the_local_cluster_command_runs_with_the_readme_flags():
  # The README's local_cluster flags, for real, with a command that only reports each process.
  words = next(c for c in readme_commands() if "launch.local_cluster" in c)
  i = words.index("launch.local_cluster")
  flags_given = list(words[i + 1:words.index("--")])
  probe = "import os; print('process', os.environ['AGE_JAX_PROCESS_ID'], 'of', os.environ['AGE_JAX_NUM_PROCESSES'])"
  done = subprocess.run([sys.executable, "-m", "launch.local_cluster", *flags_given, "--", sys.executable, "-c", probe],
                        cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert done.returncode == 0, done.stderr[-2000:]
  assert "process 0 of 2" in done.stdout and "process 1 of 2" in done.stdout, done.stdout


def test_the_readme_python_snippets_compile():
  for lang, body in code_blocks(_read(README)):
    if lang == "python":
      compile(body, "README.md", "exec")


def test_the_layout_names_what_is_there():
  block = next(body for lang, body in code_blocks(_read(README)) if body.startswith("age_jax/"))
  named = set(re.findall(r"[\w./-]+", block))
  paths = [line.split()[0] for line in block.splitlines() if line and not line[0].isspace()]
  assert not [p for p in paths if not os.path.exists(os.path.join(ROOT, p))], paths
  def listed(folder):
    return {f for f in os.listdir(os.path.join(ROOT, folder)) if not f.startswith((".", "__"))}
  unnamed = []
  for entry in listed("age_jax"):   # every top-level module and package, by its path or its name
    if f"age_jax/{entry}" not in named and f"age_jax/{entry}/" not in named and entry not in named:
      unnamed.append(f"age_jax/{entry}")
  for folder in ("launch", "launch/bench"):
    for entry in listed(folder):
      if os.path.isfile(os.path.join(ROOT, folder, entry)) and entry not in named and folder != "launch/bench":
        unnamed.append(f"{folder}/{entry}")
  assert not unnamed, f"README's layout does not name: {sorted(unnamed)}"


def _slug(heading):
  # GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens.
  return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_links_between_the_docs_resolve():
  bad = []
  for path in DOCS:
    text = _read(path)
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
      if re.match(r"^[a-z]+://", target):
        continue
      file, _, anchor = target.partition("#")
      linked = os.path.normpath(os.path.join(os.path.dirname(path), file)) if file else path
      if not os.path.exists(linked):
        bad.append(f"{os.path.relpath(path, ROOT)}: {target} (no such file)")
      elif anchor and linked.endswith(".md"):
        anchors = {_slug(h) for h in re.findall(r"^#+ (.*)$", _read(linked), flags=re.M)}
        if anchor not in anchors:
          bad.append(f"{os.path.relpath(path, ROOT)}: {target} (no such heading)")
  assert not bad, "\n".join(bad)


@pytest.mark.parametrize("path", DOCS, ids=lambda p: os.path.relpath(p, ROOT))
def test_every_launcher_named_in_the_docs_exists(path):
  text = _read(path)
  missing = sorted({m for m in re.findall(r"\blaunch\.[\w.]*\w", text) if _module_path(m) is None}
                   | {s for s in re.findall(r"\blaunch/[\w/]+\.(?:sh|sbatch|py)\b", text)
                      if not os.path.exists(os.path.join(ROOT, s))})
  assert not missing, f"{os.path.relpath(path, ROOT)} names launchers that do not exist: {missing}"
