"""Evaluation metrics that reproduce the reference scripts (coco-caption, VQA, POPE, CHAIR), as plain
functions in :mod:`perceptlm.metrics.functional`; CHAIR's COCO object vocabulary in
:mod:`perceptlm.metrics.coco_objects`."""
