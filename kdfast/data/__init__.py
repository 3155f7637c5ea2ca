"""Data: offline fetch of real models/datasets, task loading, tokenisation, augmentation.

* :mod:`kdfast.data.fetch`    -- cached, checksummed fetch of the offline teacher and data
* :mod:`kdfast.data.tasks`    -- ``load_task("movie-sentences" | "snli" | "csv:PATH" | "glue/sst2")``
* :mod:`kdfast.data.metrics`  -- accuracy, F1, Matthews correlation, Pearson
* :mod:`kdfast.data.tokenize` -- encoding for teachers and students, batching
* :mod:`kdfast.data.augment`  -- Tang et al.'s augmentation (masking, POS-guided replacement,
  n-gram sampling)
* :mod:`kdfast.data.vectors`  -- word2vec / GloVe files for the student's embeddings
"""
