"""Old import path of ``kdfast extract``'s helpers, kept until kdfast/cli.py imports them from
their homes: :func:`kdfast.models.teachers.load_bert`, :func:`kdfast.data.tasks.load_sentences`
and :func:`kdfast.data.tokenize.make_batches`. This module is to be deleted."""
from kdfast.data.tasks import load_sentences
from kdfast.data.tokenize import make_batches
from kdfast.models.teachers import load_bert as load_teacher

__all__ = ["load_sentences", "load_teacher", "make_batches"]
