"""The backend API's OpenAPI 3 document, served at /api/openapi.json.

tests/api/test_openapi.py runs schemathesis against a live server with it,
so what it says is what the server does.
"""

from __future__ import annotations

from typing import Any

from roost import __version__
from roost.proto.messages import MAX_PRESENCE_USERS

ID_PATTERN = "^[A-Za-z0-9._@-]{1,64}$"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*statuses: int) -> dict[str, Any]:
    meaning = {
        400: "The request is malformed: bad JSON, a bad id, a missing or mistyped field.",
        401: "No valid `Authorization: Bearer <api key>`.",
        403: "The sender is not a member of the group.",
        404: "No such group (or no such path).",
        409: "The recipient's inbox is full (`inbox_cap`); nothing was stored.",
        413: "The request body is larger than `max_body`.",
        429: "The group's owner has too many group deliveries in flight; retry later.",
        503: "The worker owning the user or group is restarting, or its store failed; retry.",
    }
    return {str(status): _json(_ref("Error"), meaning[status]) for status in statuses}


def _body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": schema}}}


_GROUP_PARAM = {
    "name": "gid",
    "in": "path",
    "required": True,
    "description": "The group id: 1-64 characters from `[A-Za-z0-9._@-]`.",
    "schema": _ref("Id"),
}

_PRESENCE_USERS = (
    f"^[A-Za-z0-9._@-]{{1,64}}(,[A-Za-z0-9._@-]{{1,64}}){{0,{MAX_PRESENCE_USERS - 1}}}$"
)


def document(max_members: int) -> dict[str, Any]:
    """The OpenAPI document; ``max_members`` is the server's ``group_max_members``."""
    members = {"type": "array", "items": _ref("Id"), "maxItems": max_members}
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "roost backend API",
            "version": __version__,
            "description": (
                "The app backend's side of roost: send messages, manage groups, read "
                "presence, disconnect users. See docs/api.md."
            ),
        },
        "security": [{"bearer": []}],
        "paths": {
            "/api/send": {
                "post": {
                    "summary": "Send a message to a user or a group",
                    "description": (
                        "The same path and guarantees as a client's send: answered once the "
                        "message is committed to the recipient's inbox (for a group: to every "
                        "member's). `from` is a user, or `system` for the backend itself; a "
                        "user sending to a group must be a member."
                    ),
                    "operationId": "send",
                    "requestBody": _body(_ref("SendRequest")),
                    "responses": {
                        "200": _json(_ref("Sent"), "Committed."),
                        **_errors(400, 401, 403, 404, 409, 413, 429, 503),
                    },
                }
            },
            "/api/groups/{gid}": {
                "parameters": [_GROUP_PARAM],
                "put": {
                    "summary": "Create a group or replace its members",
                    "operationId": "putGroup",
                    "requestBody": _body(
                        {
                            "type": "object",
                            "required": ["members"],
                            "properties": {"members": members},
                            "additionalProperties": False,
                        }
                    ),
                    "responses": {
                        "200": _json(_ref("Group"), "The group, as stored."),
                        **_errors(400, 401, 404, 413, 503),
                    },
                },
                "get": {
                    "summary": "Read a group",
                    "operationId": "getGroup",
                    "responses": {
                        "200": _json(_ref("Group"), "The group."),
                        **_errors(400, 401, 404, 503),
                    },
                },
                "delete": {
                    "summary": "Delete a group",
                    "operationId": "deleteGroup",
                    "responses": {
                        "204": {"description": "Deleted."},
                        **_errors(400, 401, 404, 503),
                    },
                },
            },
            "/api/groups/{gid}/members": {
                "parameters": [_GROUP_PARAM],
                "post": {
                    "summary": "Add and remove members",
                    "description": "Adds first, then removes: a user in both ends up out.",
                    "operationId": "editMembers",
                    "requestBody": _body(
                        {
                            "type": "object",
                            "properties": {"add": members, "remove": members},
                            "additionalProperties": False,
                        }
                    ),
                    "responses": {
                        "200": _json(_ref("Group"), "The group, as stored."),
                        **_errors(400, 401, 404, 413, 503),
                    },
                },
            },
            "/api/presence": {
                "get": {
                    "summary": "Who is online",
                    "operationId": "presence",
                    "parameters": [
                        {
                            "name": "users",
                            "in": "query",
                            "required": True,
                            "description": f"1-{MAX_PRESENCE_USERS} user ids, comma-separated.",
                            "schema": {"type": "string", "pattern": _PRESENCE_USERS},
                        }
                    ],
                    "responses": {
                        "200": _json(_ref("PresenceAnswer"), "Each user's presence."),
                        **_errors(400, 401, 404),
                    },
                }
            },
            "/api/users/{user}/connection": {
                "parameters": [
                    {
                        "name": "user",
                        "in": "path",
                        "required": True,
                        "schema": _ref("Id"),
                    }
                ],
                "delete": {
                    "summary": "Disconnect a user (close code 4003)",
                    "operationId": "disconnect",
                    "responses": {
                        "200": _json(_ref("Disconnected"), "Done, or nothing to do."),
                        **_errors(400, 401, 404, 503),
                    },
                },
            },
            "/api/openapi.json": {
                "get": {
                    "summary": "This document",
                    "operationId": "openapi",
                    "security": [],
                    "responses": {
                        "200": {
                            "description": "The OpenAPI document.",
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        }
                    },
                }
            },
        },
        "components": {
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": (
                        "The API key: --api-key-file, else $ROOST_API_KEY, else <data-dir>/api-key."
                    ),
                }
            },
            "schemas": {
                "Id": {"type": "string", "pattern": ID_PATTERN},
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {"error": {"type": "string"}},
                },
                "SendRequest": {
                    "type": "object",
                    "required": ["from", "body"],
                    "properties": {
                        "from": _ref("Id"),
                        "to": _ref("Id"),
                        "group": _ref("Id"),
                        "body": {"description": "Any JSON value, stored byte for byte."},
                    },
                    "additionalProperties": False,
                    "oneOf": [{"required": ["to"]}, {"required": ["group"]}],
                },
                "Sent": {
                    "type": "object",
                    "required": ["id", "ts"],
                    "properties": {
                        "id": {"type": "string", "description": "The message id."},
                        "ts": {"type": "integer", "description": "Accepted at, unix ms."},
                    },
                },
                "Group": {
                    "type": "object",
                    "required": ["group", "members"],
                    "properties": {
                        "group": _ref("Id"),
                        "members": {"type": "array", "items": _ref("Id")},
                    },
                },
                "PresenceAnswer": {
                    "type": "object",
                    "required": ["users"],
                    "properties": {
                        "users": {
                            "type": "object",
                            "additionalProperties": {
                                "type": "object",
                                "required": ["online"],
                                "properties": {
                                    "online": {"type": "boolean"},
                                    "last_seen": {
                                        "type": "integer",
                                        "nullable": True,
                                        "description": "When an offline user was last "
                                        "connected, unix ms; null if unknown.",
                                    },
                                },
                            },
                        }
                    },
                },
                "Disconnected": {
                    "type": "object",
                    "required": ["user", "disconnected"],
                    "properties": {
                        "user": _ref("Id"),
                        "disconnected": {
                            "type": "boolean",
                            "description": "Whether the user had a connection to close.",
                        },
                    },
                },
            },
        },
    }
