"""Featurising images, below both building prototypes (:mod:`protodb.pipeline`) and segmenting
(:mod:`protodb.segment`).

=====================  ======================================================================
``windows``            window specs and plans (no torch: imported by configs and the CLI)
``crops``              cutting an image into the extractor calls of its plan
``featurize``          whole-image patch features (one pass or through a window plan), cached
``cache``              the on-disk feature cache (safetensors, keyed by extractor, image, size, plan)
``plan``               how a set's support images were featurised, read back from its build config
=====================  ======================================================================
"""
