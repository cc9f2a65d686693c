"""Face identities for pre-training (LAE 2.2: AM-softmax on identity labels, MS-Celeb-1M there).

Layouts:
  ROOT/<identity>/<image>   one folder per identity (VGGFace2, CASIA-WebFace, an extracted
                            MS-Celeb-1M); image files directly in ROOT are dropped and counted
                            (`not_in_an_identity_folder`), deeper folders are not read;
  ROOT/labels.csv           when present instead: columns file, subject[, age, gender, race] (the
                            labelled_folder layout with the subject required and the age optional).
Ages are unknown (-1) unless the CSV gives them: an identity build trains the 'am_softmax'
formulation (age formulations refuse it, naming the missing ages).

Identities with fewer than `min_images` images (option, default 2; counted after corrupt,
duplicate and no-face drops) are dropped: their images are counted in build_report.json under
`dropped.identity_below_min_images`, the identities under `identities_dropped`. The kept
identities, sorted by name, are the classes 0..N-1: each record stores its class as `identity`
(and the name as `subject`), and build_report.json lists the names in class order (`identities`,
`num_identities`), so training and any later reader agree on the mapping.

Split by image within each identity (pre-training validates closed-set identification):
train/validation ~ 90/10 by a hash of each image's bytes, except that each identity's first image
in that hash order always trains, so every class has training images. Byte-identical images in
two identities are a label conflict: dropped (`duplicate_conflicting_labels`) unless
keep_conflicting_duplicates.
"""
import collections
import os

import numpy as np
import tensorflow_datasets as tfds

from age_jax.data.builders import base, labels_csv, splits
from age_jax.data.builders.records import UNKNOWN, SourceExample, is_image, relative_name

VALIDATION_FRACTION = 0.1


class IdentityFolder(base.AgeDatasetBuilder):
  """A folder per identity, or a labels.csv with a subject column."""
  OPTIONS = {"min_images": 2}   # identities with fewer images are dropped (and counted)
  MANUAL_DOWNLOAD_INSTRUCTIONS = ("manual_dir must hold one folder of face images per identity "
                                  f"(ROOT/<identity>/*.jpg), or a {labels_csv.LABELS_FILE} with columns file "
                                  "and subject (age, gender, race optional).")
  DESCRIPTION = "Face images labelled by identity, for face-identity pre-training."

  def extra_features(self):
    return {"identity": tfds.features.Scalar(np.int32)}

  def list_examples(self, manual_dir, report):
    csv_path = os.path.join(manual_dir, labels_csv.LABELS_FILE)
    if os.path.isfile(csv_path):
      return labels_csv.read_labels_csv(csv_path, manual_dir, report, self.options["skip_bad_labels"],
                                        required=("file", "subject"))
    examples = []
    for identity in sorted(os.listdir(manual_dir)):
      if identity.startswith("."):   # .DS_Store, .git, ...
        continue
      folder = os.path.join(manual_dir, identity)
      if not os.path.isdir(folder):
        if is_image(identity):
          report.drop("not_in_an_identity_folder", identity)
        continue
      for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if os.path.isfile(path) and is_image(name):
          examples.append(SourceExample(path=path, file_name=relative_name(path, manual_dir), age=UNKNOWN,
                                        subject=identity))
    return examples

  def duplicate_label(self, example: SourceExample):
    return example.subject

  def before_split(self, examples, report):
    """Drops identities with too few images; numbers the rest in name order."""
    minimum = self.options["min_images"]
    if minimum < 1:
      raise ValueError(f"builder option min_images={minimum} for dataset {self.name!r}: expected at least 1")
    for example in examples:
      example.group = "h:" + example.sha256   # split by image: one identity's images are not kept together
    counts = collections.Counter(e.subject for e in examples)
    few = {s for s, n in counts.items() if n < minimum}
    for example in examples:
      if example.subject in few:
        report.drop("identity_below_min_images", example.file_name)
    kept = [e for e in examples if e.subject not in few]
    names = sorted({e.subject for e in kept})
    if len(names) < 2:
      raise ValueError(f"{self.name}: {len(names)} identities with at least min_images={minimum} images "
                       "(after corrupt and duplicate images were dropped); identity pre-training needs at least 2")
    index = {name: i for i, name in enumerate(names)}
    for example in kept:
      example.extras["identity"] = index[example.subject]
    report.counts.update(num_identities=len(names), identities_dropped=len(few), identities=names)
    return kept

  def assign_splits(self, examples, report):
    rank = lambda e: splits.unit_hash(e.group, self.name)
    by_identity = collections.defaultdict(list)
    for example in examples:
      by_identity[example.subject].append(example)
    training = {min(members, key=rank).group for members in by_identity.values()}
    out = {"train": [], "validation": []}
    for example in examples:
      held_out = rank(example) < VALIDATION_FRACTION and example.group not in training
      out["validation" if held_out else "train"].append(example)
    return out
