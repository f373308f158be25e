from perceptlm.injection.base import Injection
from perceptlm.injection.cross_attention import CrossAttentionInjection, GatedCrossAttentionBlock
from perceptlm.injection.inner import InnerInjection
from perceptlm.injection.prefix import PrefixInjection

INJECTIONS = {"prefix": PrefixInjection, "cross_attention": CrossAttentionInjection, "inner": InnerInjection}

__all__ = ["INJECTIONS", "CrossAttentionInjection", "GatedCrossAttentionBlock", "InnerInjection", "Injection",
           "PrefixInjection"]
