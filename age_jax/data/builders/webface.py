"""WebFace age dataset (Xing ref. [34]) with the four-fold cross-validation protocol.

We found no public description of the release layout, so this reads the generic layout:
images plus labels.csv (file, age[, gender, race, subject]). All images are stored in one split
'full' (TFDS reserves 'all') with a `fold` feature (0-3, balanced, duplicates and subjects kept within one fold); train
on 'fold{k}_train', test on 'fold{k}_test'.
"""
from age_jax.data.builders import labelled_folder, splits


class Webface(labelled_folder.LabelledFolder):
  """WebFace; manual_dir holds the images and labels.csv."""
  DESCRIPTION = "WebFace age images, four-fold cross-validation (Xing et al. 2017, Sec. 3.1.2)."
  OPTIONS = {"num_folds": 4}

  def assign_splits(self, examples, report):
    splits.balanced_folds(examples, self.options["num_folds"], salt="webface-folds")
    return {"full": list(examples)}
