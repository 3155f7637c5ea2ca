"""Teachers, transformer students and helpers around HuggingFace models.

* :mod:`kdfast.models.teachers`    -- BERT-style encoders with a task head (``load_teacher``),
  pre-trained encoders (``load_encoder``, ``load_bert``)
* :mod:`kdfast.models.transformer` -- BERT students (``TransformerStudent``, ``student_config``)
  and teacher taps (``TeacherTaps``) for intermediate-layer distillation
* :mod:`kdfast.models.capture`     -- capturing raw attention scores for intermediate-layer losses
"""
from kdfast.models.teachers import (
    TeacherClassifier,
    load_bert,
    load_encoder,
    load_teacher,
    resolve_teacher_path,
)
from kdfast.models.transformer import (
    TeacherTaps,
    TransformerStudent,
    as_classifier,
    base_bert,
    build_transformer,
    load_transformer_student,
    student_config,
)

__all__ = ["TeacherClassifier", "TeacherTaps", "TransformerStudent", "as_classifier", "base_bert",
           "build_transformer", "load_bert", "load_encoder", "load_teacher",
           "load_transformer_student", "resolve_teacher_path", "student_config"]
