"""Teacher models and helpers around HuggingFace models.

* :mod:`kdfast.models.teachers` -- BERT-style encoders with a task head (``load_teacher``)
* :mod:`kdfast.models.capture`  -- capturing raw attention scores for intermediate-layer losses
"""
from kdfast.models.teachers import TeacherClassifier, load_teacher, resolve_teacher_path

__all__ = ["TeacherClassifier", "load_teacher", "resolve_teacher_path"]
