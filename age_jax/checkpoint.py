"""Orbax checkpoints of the train state; the data order is a function of the step, so the
step is all the iterator state there is (see age_jax/data/pipeline.py)."""
import orbax.checkpoint as ocp

from age_jax import storage


class Checkpointer:

  def __init__(self, workdir: str, max_to_keep: int = 2, read_only: bool = False):
    """read_only: for readers of a workdir a trainer may be writing (never creates, cleans up
    or deletes anything there; sees only finalised checkpoints)."""
    self.directory = storage.path(workdir) / "checkpoints"
    # Where a directory rename is not atomic (gcsfuse), orbax writes in place plus a commit file.
    atomicity = None if storage.renames_are_atomic(workdir) else ocp.options.AtomicityOptions(
        mode=ocp.options.AtomicityMode.COMMIT_FILE)
    self.manager = ocp.CheckpointManager(self.directory, options=ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, create=not read_only, read_only=read_only, atomicity_options=atomicity))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state) -> None:
    self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state)), force=True)

  def restore(self, abstract_state, step: int | None = None):
    """Restores onto the shardings of abstract_state (a pytree of jax.ShapeDtypeStruct)."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {self.directory}")
    restored = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state)))
    return restored["state"]

  def restore_variables(self, abstract_variables: dict, step: int | None = None) -> dict:
    """The subtrees of the saved train state named in abstract_variables (e.g. step, params,
    batch_stats: what inference needs), restored onto their shardings; the optimizer state is
    never read."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {self.directory}")
    restore = ocp.args.PyTreeRestore(item=abstract_variables, partial_restore=True,
                                     restore_args=ocp.checkpoint_utils.construct_restore_args(abstract_variables))
    return self.manager.restore(step, args=ocp.args.Composite(state=restore))["state"]

  def reload(self):
    """Re-reads the list of finalised steps (a trainer may have added or rotated some)."""
    self.manager.reload()

  def wait(self):
    self.manager.wait_until_finished()

  def close(self):
    self.manager.close()

