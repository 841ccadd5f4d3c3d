"""The one place hvac and requests exceptions become Layer-7 errors for ``l7.secrets``.

    OpenBao answer                          Layer-7 error (chosen by the caller)
    404 (hvac InvalidPath)                  ``not_found()``
    401 / 403                               ``forbidden()``
    400 / 405 / bad parameters              ``invalid()``
    connection error, timeout, 5xx,         ``SecretsDegraded`` (secrets_degraded)
    sealed (503), any other answer,
    a response without the expected shape

Messages never include a request or response body: hvac's own text (the server's error
strings and the URL, which holds only paths) is the most that is quoted.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import hvac.exceptions
import requests

from l7.errors import L7Error
from l7.secrets.interface import SecretsDegraded

_T = TypeVar("_T")
ErrorFactory = Callable[[], L7Error]


def call(
    fn: Callable[[], _T],
    *,
    where: str,
    not_found: ErrorFactory,
    forbidden: ErrorFactory,
    invalid: ErrorFactory,
) -> _T:
    """Run one OpenBao call and translate what it raises."""
    try:
        return fn()
    except hvac.exceptions.InvalidPath as e:
        raise not_found() from e
    except (hvac.exceptions.Forbidden, hvac.exceptions.Unauthorized) as e:
        raise forbidden() from e
    except (
        hvac.exceptions.InvalidRequest,
        hvac.exceptions.UnsupportedOperation,
        hvac.exceptions.ParamValidationError,
    ) as e:
        raise invalid() from e
    except (hvac.exceptions.VaultError, requests.RequestException) as e:
        raise SecretsDegraded(
            f"OpenBao did not answer {where} ({type(e).__name__}: {e}); secrets are "
            "unavailable until it is reachable and unsealed"
        ) from e


def shape_error(where: str, e: Exception) -> SecretsDegraded:
    """OpenBao answered, but not in the shape expected."""
    return SecretsDegraded(
        f"OpenBao answered {where} without the expected fields ({type(e).__name__}); "
        "check the mount type and the OpenBao version"
    )
