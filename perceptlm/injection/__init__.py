from perceptlm.injection.base import Injection
from perceptlm.injection.cross_attention import CrossAttentionInjection, GatedCrossAttentionBlock
from perceptlm.injection.inner import InnerInjection
from perceptlm.injection.prefix import PrefixInjection
from perceptlm.injection.registry import INJECTIONS, build_injection, injection_arguments, resolve_injection

__all__ = ["INJECTIONS", "CrossAttentionInjection", "GatedCrossAttentionBlock", "InnerInjection", "Injection",
           "PrefixInjection", "build_injection", "injection_arguments", "resolve_injection"]
