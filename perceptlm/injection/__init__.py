from perceptlm.injection.base import Injection
from perceptlm.injection.prefix import PrefixInjection

INJECTIONS = {"prefix": PrefixInjection}

__all__ = ["INJECTIONS", "Injection", "PrefixInjection"]
