"""Face recognition (the MW-BP paper's Section 5.4): margin-softmax exits and face verification.

::

    from compact import create_model, attach_exits, create_method
    from compact.face import MarginLoss, verify
    net = attach_exits(create_model("mobilefacenet", num_classes=1000), 3, head="embedding",
                       input_size=(3, 112, 112))
    method = create_method("mwbp", net)
    method.criterion = MarginLoss("arcface")          # every output trains its cosine classifier
    figures = verify(exit_model, images, pairs, same)  # 10-fold accuracy, TAR at FAR 1e-3
"""

from __future__ import annotations

from compact._lazy import lazy_getattr

_LAZY = {
    "CosineClassifier": "compact.face.margin",
    "MarginLoss": "compact.face.margin",
    "embed": "compact.face.verification",
    "read_lfw_pairs": "compact.face.verification",
    "read_packed": "compact.face.verification",
    "tar_at_far": "compact.face.verification",
    "ten_fold_accuracy": "compact.face.verification",
    "verify": "compact.face.verification",
}

__getattr__ = lazy_getattr("compact.face", _LAZY, globals())

__all__ = sorted(_LAZY)
