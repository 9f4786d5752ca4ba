"""For evaluations, never used to issue or audit: the abuser's countermeasures (image attacks,
:mod:`~tracemark.evaluation.attacks`), a DIAGNOSIS-style baseline detector
(:mod:`~tracemark.evaluation.baseline`) and a synthetic captioned dataset for demos, tests and
benchmarks (:mod:`~tracemark.evaluation.samples`)."""
