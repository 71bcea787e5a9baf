"""Model architectures: each a plain ``nn.Module`` whose constructor takes the model config
(the fields of ``conf/model/<name>.yaml``) and whose ``forward(input)`` returns logits."""

from wgpt.models.gpt import GPT
from wgpt.models.llama import Llama

__all__ = ["GPT", "Llama"]
