"""Head-by-head forward calls used by several test modules."""

import torch
from transformers import BlipForConditionalGeneration, BlipForImageTextRetrieval, BlipForQuestionAnswering, BlipModel

STOCK_HEADS = [BlipModel, BlipForImageTextRetrieval, BlipForQuestionAnswering, BlipForConditionalGeneration]


def head_outputs(model, inputs: dict) -> dict[str, torch.Tensor]:
    """The tensors each head is used for, from one batch of `make_inputs`."""
    pixel_values, input_ids, attention_mask = inputs["pixel_values"], inputs["input_ids"], inputs["attention_mask"]
    with torch.no_grad():
        if isinstance(model, BlipModel):
            out = model(input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask)
            return {"logits_per_image": out.logits_per_image, "text_embeds": out.text_embeds}
        if isinstance(model, BlipForImageTextRetrieval):
            itm = model(input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask)
            itc = model(input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask,
                        use_itm_head=False)
            return {"itm": itm.itm_score, "itc": itc.itm_score}
        if isinstance(model, BlipForQuestionAnswering):
            labels = input_ids[:, :4].clone()
            loss = model(input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask,
                         labels=labels).loss
            answer = model.generate(input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask,
                                    max_new_tokens=4, do_sample=False)
            return {"loss": loss, "generated": answer}
        if isinstance(model, BlipForConditionalGeneration):
            out = model(pixel_values=pixel_values, input_ids=input_ids, attention_mask=attention_mask,
                        labels=input_ids)
            caption = model.generate(pixel_values=pixel_values, max_new_tokens=4, do_sample=False)
            return {"logits": out.logits, "loss": out.loss, "generated": caption}
    raise TypeError(type(model))


def assert_same_outputs(a: dict, b: dict, atol: float = 1e-5) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if a[key].dtype in (torch.long, torch.int):
            assert torch.equal(a[key], b[key]), key
        else:
            assert torch.allclose(a[key], b[key], atol=atol), f"{key}: max diff {(a[key] - b[key]).abs().max()}"
