"""`build_processor`: a WordPiece tokenizer trained on the generated corpus plus a `BlipImageProcessor`."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
from transformers import BertTokenizerFast, BlipProcessor

if importlib.util.find_spec("torchvision") is not None:
    from transformers import BlipImageProcessor
else:  # the same processing without torchvision (transformers would fall back to it with a warning)
    from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil as BlipImageProcessor

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]"]
# Scenes are drawn on a mid-grey background: normalise around it rather than with ImageNet statistics.
IMAGE_MEAN, IMAGE_STD = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]


def build_processor(corpus: Iterable[str], image_size: int, vocab_size: int = 400) -> BlipProcessor:
    """Train a lower-casing WordPiece tokenizer on `corpus` and pair it with an image processor for `image_size`.

    The tokenizer frames every text as `[CLS] text [SEP]`; `[DEC]` starts BLIP's decoders (its `bos_token`).
    """
    if image_size < 16:
        raise ValueError(f"build_processor image_size={image_size} is invalid: allowed >= 16.")
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.train_from_iterator(corpus, trainers.WordPieceTrainer(vocab_size=vocab_size,
                                                                    special_tokens=SPECIAL_TOKENS))
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)]
    )
    fast = BertTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                             sep_token="[SEP]", mask_token="[MASK]", bos_token="[DEC]", model_max_length=64)
    image_processor = BlipImageProcessor(size={"height": image_size, "width": image_size}, image_mean=IMAGE_MEAN,
                                         image_std=IMAGE_STD)
    return BlipProcessor(image_processor=image_processor, tokenizer=fast)


def dataset_corpus(dataset) -> Iterable[str]:
    """Every text of a split of `make_dataset`: captions, statements, questions and answers."""
    for column in ("caption", "true_statement", "false_statement", "question", "answer"):
        yield from dataset[column]
