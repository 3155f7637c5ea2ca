"""Data: offline fetch of real models/datasets, task loading, tokenisation, augmentation."""
