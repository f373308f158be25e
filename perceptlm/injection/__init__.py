from perceptlm.injection.base import Injection
from perceptlm.injection.cross_attention import CrossAttentionInjection, GatedCrossAttentionBlock
from perceptlm.injection.prefix import PrefixInjection

INJECTIONS = {"prefix": PrefixInjection, "cross_attention": CrossAttentionInjection}

__all__ = ["INJECTIONS", "CrossAttentionInjection", "GatedCrossAttentionBlock", "Injection", "PrefixInjection"]
