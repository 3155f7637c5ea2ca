"""Teacher models (:mod:`kdfast.models.teachers`) and helpers that capture HF internals
for intermediate-layer losses (:mod:`kdfast.models.capture`)."""
from kdfast.models.teachers import TeacherClassifier, load_teacher, resolve_teacher_path

__all__ = ["TeacherClassifier", "load_teacher", "resolve_teacher_path"]
