"""R2 buckets as Cloudflare's API lists, makes and deletes them (``/r2/buckets``).

A bucket is the name an ``r2_bucket`` binding gives, and its objects live
per (dispatch namespace, bucket) from the first put: any name works, made
here or not. Made here (``client.r2.buckets.create(name=...)``, ``wrangler
r2 bucket create``), a name is kept with the time it was made and is unique,
as on Cloudflare. The account's buckets are those made here and those its
deployed scripts bind (``?namespace=NS``: dispatch namespace NS's scripts).
A bucket is deleted only when empty in every namespace and bound by no
deployed script, as Cloudflare deletes only empty buckets.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec

from supervisor.admin.decode import body_as, clip, query_int
from supervisor.admin.kv import MAX_PER_PAGE, ResourceHandlers, choice
from supervisor.admin.render import Response, envelope
from supervisor.admin.router import Request, Router
from supervisor.errors import Invalid, NotSupported
from supervisor.store.records import ResourceInfo

_R2 = "accounts/*/r2/buckets"
_KIND = "r2_bucket"
#: Cloudflare's bucket names: 3 to 63 lowercase letters, digits and '-', not at either end.
_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$")


class _Bucket(msgspec.Struct):
    name: str
    #: Where Cloudflare would place it, and how it would store it; one host here.
    locationHint: str | None = None  # noqa: N815 - Cloudflare's field names
    storageClass: str | None = None  # noqa: N815


def bucket_json(name: str, made: ResourceInfo | None = None) -> dict[str, Any]:
    return {"name": name, "creation_date": made.created_on if made else None, "location": "local",
            "storage_class": "Standard"}


class R2BucketHandlers(ResourceHandlers):
    def register(self, router: Router) -> None:
        router.add(_R2, GET=self.list_buckets, POST=self.create_bucket)
        router.add(f"{_R2}/{{bucket}}", GET=self.get_bucket, DELETE=self.delete_bucket, PATCH=self.edit_bucket)

    async def list_buckets(self, request: Request) -> Response:
        """By name (``direction``), ``name_contains``, from after ``start_after``
        or ``cursor`` (the last name of the page before), ``per_page`` at a time."""
        known = await self._known(request, _KIND, "bucket_name")
        descending = choice(request, "direction", ("asc", "desc")) == "desc"
        per_page = query_int(request.query, "per_page", MAX_PER_PAGE, MAX_PER_PAGE)
        after = request.query.get("cursor") or request.query.get("start_after") or ""
        names = sorted((n for n in known if request.query.get("name_contains", "") in n), reverse=descending)
        if after:
            names = [n for n in names if (n < after if descending else n > after)]
        page = names[:per_page]
        return envelope(200, {"buckets": [bucket_json(n, known[n]) for n in page]},
                        result_info={"per_page": per_page,
                                     "cursor": page[-1] if len(names) > per_page else ""})

    async def get_bucket(self, request: Request) -> Response:
        name, made = await self._one(request, _KIND, "bucket_name", "R2 bucket", "bucket")
        return envelope(200, bucket_json(name, made))

    async def edit_bucket(self, request: Request) -> Response:
        """``client.r2.buckets.edit``: the default storage class (header
        ``cf-r2-storage-class``). Corral keeps no per-bucket default: an
        object is Standard unless its put names another class (which it
        keeps), so Standard is accepted, changing nothing, and another is
        refused rather than silently not applied."""
        name, made = await self._one(request, _KIND, "bucket_name", "R2 bucket", "bucket")
        wanted = request.headers.get("cf-r2-storage-class", "")
        if not wanted:
            raise Invalid("send the storage class in the cf-r2-storage-class header ('Standard')")
        if wanted != "Standard":
            raise NotSupported(f"a bucket's default storage class {clip(wanted)!r} is not supported by Corral: "
                               "objects are 'Standard' unless their put names a storage class")
        return envelope(200, bucket_json(name, made))

    async def create_bucket(self, request: Request) -> Response:
        name = body_as(request.body, _Bucket, '{"name": "my-bucket"}', "make an R2 bucket").name
        if not _NAME.match(name):
            raise Invalid(f"R2 bucket name {clip(name)!r}: use 3 to 63 lowercase letters, digits and '-', "
                          "starting and ending with a letter or digit")
        made = await self._make(_KIND, name, name, "The bucket you tried to create already exists, and you own it")
        return envelope(200, bucket_json(name, made))

    async def delete_bucket(self, request: Request) -> Response:
        name, _ = await self._one(request, _KIND, "bucket_name", "R2 bucket", "bucket")
        await self._delete(_KIND, "bucket_name", "R2 bucket", name)
        return envelope(200, {})


__all__ = ["R2BucketHandlers"]
