"""Teacher models: BERT-style encoders with a task head (:mod:`kdfast.models.teachers`)."""
from kdfast.models.teachers import TeacherClassifier, load_teacher, resolve_teacher_path

__all__ = ["TeacherClassifier", "load_teacher", "resolve_teacher_path"]
