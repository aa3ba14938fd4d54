"""A DreamBench-style yardstick in the toy world: how well did a DreamBooth adapter learn the subject?

For each method (MoSLoRA at rank r, LoRA at rank r, LoRA at rank 2r) and each seed, one adapter is trained
on a bundled subject (:data:`moslora_diffusion.toyworld.subject.SUBJECTS`) through the training library, then scored with the attribute
reader and the subject's detector:

- subject fidelity: images for "a sks circle on a {bg} background" (the subject's instance prompt) that show
  the subject;
- prompt fidelity: of those prompts, images whose background has the requested colour;
- prior preservation: images for class prompts ("a {colour} circle on a {bg} background"; "a {colour} shape
  ..." for a subject whose class noun is "shape") that draw the class with the requested attributes and not
  the subject;
- base drift: all-three-attributes accuracy on a fixed panel of ordinary prompts (the 12 held-out
  combinations: every shape three times, every colour twice as object and twice as background) with the
  adapter loaded; the base model's own accuracy is the reference row.

Paired design: for a given seed every method sees the same data order, noise and timesteps (the trainer draws
them from generators seeded by the run seed alone), and every adapter is scored on the same prompts with the
same sampling seeds, so a per-seed difference between two methods is the methods' difference. Every number is
a mean over seeds with a t-based 95% confidence interval, and the paired differences MoSLoRA − LoRA get their
own intervals (from the per-seed differences, which is tighter than comparing two intervals).

Modules: :mod:`.config` (methods, settings), :mod:`.runs` (training and scoring, worker processes),
:mod:`.report` (tables, plots, sample grid), :mod:`.pairing` (two studies seed by seed), :mod:`.stats`
(means and t-based intervals), :mod:`.cli` (``eval-toyworld``). The images are scored by
:mod:`moslora_diffusion.toyworld.scoring`, the same code the training loop's toy scorer uses.
"""
