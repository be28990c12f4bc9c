"""Writes src/http/openapi.json (python3 .ci/gen_openapi.py > src/http/openapi.json): the
OpenAPI 3.1 document of the HTTP side. tests/it/openapi.rs checks it against the routes."""
import json
problem = {"description": "A problem (RFC 9457)", "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}}
def resp(desc, schema=None, ctype="application/json"):
    r = {"description": desc}
    if schema is not None:
        r["content"] = {ctype: {"schema": schema}}
    return r
def ref(name): return {"$ref": f"#/components/schemas/{name}"}
def errors(*codes):
    names = {"400": "Malformed JSON or query", "401": "No token, or not a valid one", "403": "The wrong kind of token for this API",
             "404": "No such resource (or another biller's)", "409": "The window moved on, or the change is not allowed in its state",
             "413": "The body is larger than http.body_limit", "415": "The body is not JSON", "422": "A field is invalid; errors[].pointer names it",
             "429": "Too many requests for this token; see Retry-After", "503": "The database is unavailable"}
    return {c: {"$ref": "#/components/responses/Problem"} for c in codes}
idem = {"name": "Idempotency-Key", "in": "header", "required": False, "schema": {"type": "string", "minLength": 1, "maxLength": 255},
        "description": "The same key and request within 24 hours answers the first answer again and changes nothing; the same key with another request is 422."}
def path_param(name, desc, typ="string"):
    return {"name": name, "in": "path", "required": True, "schema": {"type": typ}, "description": desc}
sub_id = path_param("id", "The subscription's id")
win_id = path_param("id", "The window's id")
component_q = {"name": "component", "in": "query", "required": False, "schema": {"type": "string"}, "description": "Only windows affecting these components, comma-separated"}
lang_q = {"name": "lang", "in": "query", "required": False, "schema": {"type": "string", "enum": ["en", "sw"]}}
biller_sec = [{"billerToken": []}]
admin_sec = [{"adminToken": []}]
json_body = lambda schema: {"required": True, "content": {"application/json": {"schema": schema}}}
opt_body = lambda schema: {"required": False, "content": {"application/json": {"schema": schema}}}
form_body = lambda props, required: {"required": True, "content": {"application/x-www-form-urlencoded": {"schema": {"type": "object", "properties": props, "required": required}}}}

paths = {
 "/": {"get": {"summary": "The status page: current and planned maintenance, in English or Swahili", "operationId": "statusPage", "tags": ["public"],
   "parameters": [lang_q, {"name": "tz", "in": "query", "required": False, "schema": {"type": "string"}, "description": "Also show times in this IANA zone"}],
   "responses": {"200": resp("HTML, no script needed", {"type": "string"}, "text/html"), **errors("400", "422")}}},
 "/healthz": {"get": {"summary": "The process answers", "operationId": "healthz", "tags": ["operations"], "responses": {"200": resp("ok", {"type": "string"}, "text/plain")}}},
 "/readyz": {"get": {"summary": "The database answers and its migrations are current", "operationId": "readyz", "tags": ["operations"],
   "responses": {"200": resp("ready", {"type": "string"}, "text/plain"), **errors("503")}}},
 "/metrics": {"get": {"summary": "Prometheus metrics from the ledger", "operationId": "metrics", "tags": ["operations"],
   "responses": {"200": resp("The Prometheus text format", {"type": "string"}, "text/plain"), **errors("503")}}},
 "/openapi.json": {"get": {"summary": "This document", "operationId": "openapi", "tags": ["operations"], "responses": {"200": resp("OpenAPI 3.1", {"type": "object"})}}},
 "/v1/windows": {"get": {"summary": "Upcoming and current windows", "operationId": "listWindows", "tags": ["public"], "parameters": [component_q],
   "responses": {"200": resp("Soonest first", {"type": "object", "required": ["windows"], "properties": {"windows": {"type": "array", "items": ref("Window")}}}), **errors("400", "422", "503")}}},
 "/v1/windows/{id}": {"get": {"summary": "One window, past ones too", "operationId": "getWindow", "tags": ["public"], "parameters": [win_id],
   "responses": {"200": resp("The window", ref("Window")), **errors("404", "503")}}},
 "/calendar.ics": {"get": {"summary": "iCalendar feed (RFC 5545): one VEVENT per window, UID stable, SEQUENCE = revision, cancelled ones STATUS:CANCELLED", "operationId": "calendar", "tags": ["public"],
   "parameters": [component_q, lang_q], "responses": {"200": resp("text/calendar", {"type": "string"}, "text/calendar"), **errors("400", "422", "503")}}},
 "/feed.atom": {"get": {"summary": "Atom feed (RFC 4287) of window events", "operationId": "atomFeed", "tags": ["public"],
   "parameters": [component_q, lang_q], "responses": {"200": resp("application/atom+xml", {"type": "string"}, "application/atom+xml"), **errors("400", "422", "503")}}},
 "/v1/subscriptions": {
   "get": {"summary": "The caller's webhook subscriptions", "operationId": "listSubscriptions", "tags": ["billers"], "security": biller_sec,
     "responses": {"200": resp("Id order", {"type": "object", "required": ["subscriptions"], "properties": {"subscriptions": {"type": "array", "items": ref("Subscription")}}}), **errors("401", "403", "429")}},
   "post": {"summary": "Subscribe an endpoint; the signing secret is in the answer, only now", "operationId": "createSubscription", "tags": ["billers"], "security": biller_sec,
     "parameters": [idem], "requestBody": json_body(ref("NewSubscription")),
     "responses": {"201": resp("Created", ref("SubscriptionWithSecret")), **errors("400", "401", "403", "413", "415", "422", "429")}}},
 "/v1/subscriptions/{id}": {
   "get": {"summary": "One subscription", "operationId": "getSubscription", "tags": ["billers"], "security": biller_sec, "parameters": [sub_id],
     "responses": {"200": resp("The subscription", ref("Subscription")), **errors("401", "403", "404", "429")}},
   "patch": {"summary": "Change the URL, event types, components, or enable/disable; every field is checked before any is written", "operationId": "updateSubscription", "tags": ["billers"],
     "security": biller_sec, "parameters": [sub_id], "requestBody": json_body(ref("SubscriptionPatch")),
     "responses": {"200": resp("The subscription as it is now", ref("Subscription")), **errors("400", "401", "403", "404", "413", "415", "422", "429")}},
   "delete": {"summary": "Stop sending to it; what is queued for it is withdrawn", "operationId": "deleteSubscription", "tags": ["billers"], "security": biller_sec, "parameters": [sub_id],
     "responses": {"204": {"description": "Removed"}, **errors("401", "403", "404", "429")}}},
 "/v1/subscriptions/{id}/rotate-secret": {"post": {"summary": "A new signing secret; the old one also signs until previous_secret_until", "operationId": "rotateSecret", "tags": ["billers"],
   "security": biller_sec, "parameters": [sub_id, idem], "requestBody": opt_body({"type": "object", "additionalProperties": False, "properties": {"overlap": {"type": "string", "description": "e.g. 24h (default), at most 168h"}}}),
   "responses": {"200": resp("The new secret, only now", {"type": "object", "required": ["id", "secret", "previous_secret_until"], "properties": {"id": {"type": "integer"}, "secret": {"type": "string"}, "previous_secret_until": {"type": "string", "format": "date-time"}}}),
     **errors("400", "401", "403", "404", "422", "429")}}},
 "/v1/subscriptions/{id}/test": {"post": {"summary": "Send a signed webhook.test event now and say how the endpoint answered", "operationId": "testSubscription", "tags": ["billers"],
   "security": biller_sec, "parameters": [sub_id],
   "responses": {"200": resp("How it went", {"type": "object", "required": ["delivered", "latency_ms"], "properties": {"delivered": {"type": "boolean"}, "latency_ms": {"type": "integer"}, "error": {"type": "string"}}}),
     **errors("401", "403", "404", "429")}}},
 "/v1/subscriptions/{id}/attempts": {"get": {"summary": "The latest 50 attempts to deliver to it, newest first", "operationId": "subscriptionAttempts", "tags": ["billers"],
   "security": biller_sec, "parameters": [sub_id],
   "responses": {"200": resp("Attempts", {"type": "object", "required": ["attempts"], "properties": {"attempts": {"type": "array", "items": ref("Attempt")}}}), **errors("401", "403", "404", "429")}}},
 "/v1/admin/windows": {
   "get": {"summary": "Every window", "operationId": "adminListWindows", "tags": ["operator"], "security": admin_sec,
     "responses": {"200": resp("Newest first", {"type": "object", "required": ["windows"], "properties": {"windows": {"type": "array", "items": ref("AdminWindow")}}}), **errors("401", "403", "429")}},
   "post": {"summary": "Record a window", "operationId": "adminCreateWindow", "tags": ["operator"], "security": admin_sec, "parameters": [idem],
     "requestBody": json_body(ref("NewWindow")), "responses": {"201": resp("Created", ref("AdminWindow")), **errors("400", "401", "403", "413", "415", "422", "429")}}},
 "/v1/admin/windows/{id}": {"get": {"summary": "One window", "operationId": "adminGetWindow", "tags": ["operator"], "security": admin_sec, "parameters": [win_id],
   "responses": {"200": resp("The window", ref("AdminWindow")), **errors("401", "403", "404", "429")}}},
}
for action, schema, summary in [
    ("reschedule", ref("Reschedule"), "Move a window: a new revision; what is queued for the old one is superseded"),
    ("extend", ref("Extend"), "A later end"),
    ("cancel", ref("Cancel"), "Cancel, with a reason in English and Swahili"),
    ("complete", ref("Complete"), "Mark an in-progress window completed (the all-clear)"),
]:
    paths[f"/v1/admin/windows/{{id}}/{action}"] = {"post": {"summary": summary, "operationId": f"admin{action.capitalize()}Window", "tags": ["operator"], "security": admin_sec,
        "parameters": [win_id], "requestBody": (opt_body if action == "complete" else json_body)(schema),
        "responses": {"200": resp("The window at its new revision", ref("AdminWindow")), **errors("400", "401", "403", "404", "409", "413", "415", "422", "429")}}}
paths["/v1/events"] = {"get": {"summary": "The caller's events in order, as they were sent (also those no endpoint received)", "operationId": "listEvents", "tags": ["billers"],
    "security": biller_sec, "parameters": [
        {"name": "after", "in": "query", "required": False, "schema": {"type": "integer", "minimum": 0}, "description": "The id of the last event seen (next_after of the previous page)"},
        {"name": "limit", "in": "query", "required": False, "schema": {"type": "integer", "minimum": 1, "maximum": 500}}],
    "responses": {"200": resp("A page", {"type": "object", "required": ["events", "next_after"], "properties": {"events": {"type": "array", "items": ref("Event")}, "next_after": {"type": "integer"}}}),
        **errors("400", "401", "403", "422", "429")}}}
paths["/v1/subscriptions/{id}/replay"] = {"post": {"summary": "Send the caller's events again to this subscription, in order, under their first webhook-id; up to 100 a request, stopping at the first failure", "operationId": "replaySubscription", "tags": ["billers"],
    "security": biller_sec, "parameters": [sub_id,
        {"name": "since", "in": "query", "required": False, "schema": {"type": "string", "format": "date-time"}},
        {"name": "after", "in": "query", "required": False, "schema": {"type": "integer", "minimum": 0}}],
    "responses": {"200": resp("What went", {"type": "object", "required": ["replayed", "next_after"], "properties": {"replayed": {"type": "integer"}, "error": {"type": ["string", "null"]}, "next_after": {"type": ["integer", "null"], "description": "Call again with after= this to go on; null when done"}}}),
        **errors("400", "401", "403", "404", "409", "422", "429")}}}
paths["/v1/admin/windows/{id}/summary"] = {"get": {"summary": "Deliveries by notice, channel and state, and the notice log", "operationId": "adminWindowSummary", "tags": ["operator"],
    "security": admin_sec, "parameters": [win_id], "responses": {"200": resp("Counts", {"type": "object", "required": ["window", "revision", "deliveries", "notices"], "properties": {"window": {"type": "integer"}, "revision": {"type": "integer"}, "deliveries": {"type": "array", "items": {"type": "object"}}, "notices": {"type": "array", "items": {"type": "object"}}}}), **errors("401", "403", "404", "429")}}}
paths["/v1/admin/windows/{id}/deliveries"] = {"get": {"summary": "A window's deliveries in one state (failed by default), a page at a time", "operationId": "adminWindowDeliveries", "tags": ["operator"],
    "security": admin_sec, "parameters": [win_id,
        {"name": "state", "in": "query", "required": False, "schema": {"type": "string", "enum": ["pending", "claimed", "sent", "failed", "expired", "superseded"]}},
        {"name": "after", "in": "query", "required": False, "schema": {"type": "integer"}, "description": "next_after of the previous page"},
        {"name": "limit", "in": "query", "required": False, "schema": {"type": "integer", "minimum": 1, "maximum": 1000}}],
    "responses": {"200": resp("A page", {"type": "object", "required": ["deliveries", "next_after"], "properties": {"deliveries": {"type": "array", "items": {"type": "object"}}, "next_after": {"type": ["integer", "null"]}}}), **errors("400", "401", "403", "404", "422", "429")}}}
paths["/v1/admin/broadcasts"] = {"post": {"summary": "A window's notice or a free message to a filtered audience: a dry run answers the estimate; otherwise it is recorded and queued (idempotent by name) for the daemon to send", "operationId": "adminBroadcast", "tags": ["operator"],
    "security": admin_sec, "requestBody": json_body(ref("BroadcastRequest")),
    "responses": {"200": resp("The dry run's estimate (nothing recorded)", {"type": "object"}),
        "202": resp("Recorded and queued", {"type": "object", "required": ["id", "name", "recipients", "enqueued", "deadline"], "properties": {"id": {"type": "integer"}, "name": {"type": "string"}, "recipients": {"type": "integer"}, "enqueued": {"type": "integer"}, "deadline": {"type": "string", "format": "date-time"}}}),
        **errors("400", "401", "403", "404", "409", "413", "415", "422", "429")}}}
paths["/v1/admin/broadcasts/{id}"] = {"get": {"summary": "A broadcast's deliveries by state", "operationId": "adminBroadcastState", "tags": ["operator"],
    "security": admin_sec, "parameters": [path_param("id", "The broadcast's id")],
    "responses": {"200": resp("States", {"type": "object", "required": ["id", "name", "deliveries", "open", "settled"], "properties": {"id": {"type": "integer"}, "name": {"type": "string"}, "deliveries": {"type": "object", "additionalProperties": {"type": "integer"}}, "open": {"type": "integer"}, "settled": {"type": "integer"}}}),
        **errors("401", "403", "404", "429")}}}
paths["/v1/admin/recipients/import"] = {"post": {"summary": "Import (or update, by phone, else email) recipients from the CSV of `tangazo recipients import`, streamed; bad rows are reported by line and skipped, or with strict=true nothing is imported", "operationId": "adminImportRecipients", "tags": ["operator"],
    "security": admin_sec, "parameters": [{"name": "strict", "in": "query", "required": False, "schema": {"type": "boolean"}}],
    "requestBody": {"required": True, "content": {"text/csv": {"schema": {"type": "string"}}}},
    "responses": {"200": resp("The import report", {"type": "object", "required": ["rows", "imported", "updated", "unchanged", "rejected", "errors"], "properties": {
        "rows": {"type": "integer"}, "imported": {"type": "integer"}, "updated": {"type": "integer"}, "unchanged": {"type": "integer"}, "rejected": {"type": "integer"},
        "errors": {"type": "array", "items": {"type": "object", "required": ["line", "reason"], "properties": {"line": {"type": "integer"}, "reason": {"type": "string"}}}}}}),
        **errors("400", "401", "403", "413", "415", "422", "429")}}}
secret_p = path_param("secret", "This deployment's callback path secret (tangazo serve --print-callback-urls)")
sender_p = path_param("sender", "The name of the sender in the configuration")
paths["/callbacks/{secret}/africastalking/{sender}/delivery"] = {"post": {"summary": "Africa's Talking delivery report: records the handset's receipt", "operationId": "atDeliveryReport", "tags": ["callbacks"],
    "parameters": [secret_p, sender_p], "requestBody": form_body({"id": {"type": "string"}, "status": {"type": "string"}, "failureReason": {"type": "string"}}, ["id", "status"]),
    "responses": {"200": {"description": "Recorded (or nothing to record)"}, **errors("400", "404")}}}
paths["/callbacks/{secret}/africastalking/{sender}/inbound"] = {"post": {"summary": "Africa's Talking incoming SMS: STOP, ACHA or SITAKI opts the number out", "operationId": "atInbound", "tags": ["callbacks"],
    "parameters": [secret_p, sender_p], "requestBody": form_body({"from": {"type": "string"}, "to": {"type": "string"}, "text": {"type": "string"}}, ["from", "text"]),
    "responses": {"200": {"description": "Done"}, **errors("400", "404")}}}
tw_sig = {"name": "X-Twilio-Signature", "in": "header", "required": True, "schema": {"type": "string"}}
paths["/callbacks/twilio/{sender}/status"] = {"post": {"summary": "Twilio status callback: records the handset's receipt", "operationId": "twilioStatus", "tags": ["callbacks"],
    "parameters": [sender_p, tw_sig], "requestBody": form_body({"MessageSid": {"type": "string"}, "MessageStatus": {"type": "string"}}, ["MessageSid", "MessageStatus"]),
    "responses": {"204": {"description": "Recorded (or nothing to record)"}, **errors("403", "404", "422")}}}
paths["/callbacks/twilio/{sender}/inbound"] = {"post": {"summary": "Twilio incoming SMS: STOP, ACHA or SITAKI opts the number out", "operationId": "twilioInbound", "tags": ["callbacks"],
    "parameters": [sender_p, tw_sig], "requestBody": form_body({"From": {"type": "string"}, "Body": {"type": "string"}}, ["From", "Body"]),
    "responses": {"200": resp("Empty TwiML", {"type": "string"}, "text/xml"), **errors("403", "404", "422")}}}
tok = path_param("token", "The recipient's signed unsubscribe token, from the email's List-Unsubscribe")
paths["/unsubscribe/{token}"] = {
    "get": {"summary": "A page with the button that opts out (a GET changes nothing)", "operationId": "unsubscribePage", "tags": ["public"], "parameters": [tok],
        "responses": {"200": resp("HTML", {"type": "string"}, "text/html"), **errors("404")}},
    "post": {"summary": "RFC 8058 one-click unsubscribe (List-Unsubscribe=One-Click)", "operationId": "unsubscribe", "tags": ["public"], "parameters": [tok],
        "requestBody": {"required": False, "content": {"application/x-www-form-urlencoded": {"schema": {"type": "object", "properties": {"List-Unsubscribe": {"type": "string", "const": "One-Click"}}}}}},
        "responses": {"200": resp("HTML", {"type": "string"}, "text/html"), **errors("404")}}}

texts = {"type": "object", "required": ["en"], "properties": {"en": {"type": "string"}, "sw": {"type": ["string", "null"]}}}
events_enum = {"type": "string", "enum": ["window.announced", "window.reminder", "window.started", "window.rescheduled", "window.cancelled", "window.completed"]}
schemas = {
 "Problem": {"type": "object", "required": ["type", "title", "status", "detail"], "properties": {"type": {"type": "string"}, "title": {"type": "string"}, "status": {"type": "integer"}, "detail": {"type": "string"},
    "errors": {"type": "array", "items": {"type": "object", "required": ["pointer", "detail"], "properties": {"pointer": {"type": "string", "description": "JSON Pointer to the field at fault"}, "detail": {"type": "string"}}}}}},
 "Texts": texts,
 "Window": {"type": "object", "required": ["id", "revision", "status", "title", "description", "components", "starts_at", "ends_at", "zone", "updated_at"], "properties": {
    "id": {"type": "integer"}, "revision": {"type": "integer"}, "status": {"type": "string", "enum": ["scheduled", "in_progress", "completed", "cancelled"]},
    "title": ref("Texts"), "description": ref("Texts"),
    "components": {"type": "array", "items": {"type": "object", "required": ["id", "name"], "properties": {"id": {"type": "string"}, "name": ref("Texts")}}},
    "starts_at": {"type": "string", "format": "date-time"}, "ends_at": {"type": "string", "format": "date-time"}, "zone": {"type": "string"},
    "cancel_reason": ref("Texts"), "updated_at": {"type": "string", "format": "date-time"}}},
 "AdminWindow": {"type": "object", "required": ["id", "revision", "status", "title", "components", "starts_at", "ends_at", "zone"], "properties": {
    "id": {"type": "integer"}, "revision": {"type": "integer"}, "status": {"type": "string"}, "last_change": {"type": "string"}, "title": {"type": "string"}, "title_sw": {"type": ["string", "null"]},
    "description": {"type": "string"}, "description_sw": {"type": ["string", "null"]}, "components": {"type": "array", "items": {"type": "string"}},
    "starts_at": {"type": "string", "format": "date-time"}, "ends_at": {"type": "string", "format": "date-time"}, "zone": {"type": "string"}, "auto_complete": {"type": "boolean"},
    "cancel_reason": {"type": ["string", "null"]}, "cancel_reason_sw": {"type": ["string", "null"]}, "superseded_deliveries": {"type": "integer"},
    "plan": {"type": "array", "items": ref("FanOutPlan"), "description": "GET only: every fan-out the window still owes, paced at 95 % of the configured rates"},
    "cannot_meet_deadline": {"type": "array", "items": ref("FanOutPlan"), "description": "After a create or a change: the fan-outs that, paced at 95 % of the configured rates, cannot finish by their deadlines (what is not sent by then expires)"}}},
 "FanOutPlan": {"type": "object", "required": ["notice", "audience", "nominal", "start", "end", "deadline", "deliveries", "early"], "properties": {
    "notice": {"type": "string"}, "audience": {"type": "string", "enum": ["customer", "biller"]},
    "nominal": {"type": "string", "format": "date-time", "description": "When the notice is nominally due"},
    "start": {"type": "string", "format": "date-time", "description": "When its fan-out begins"},
    "end": {"type": "string", "format": "date-time", "description": "When its last message is expected"},
    "deadline": {"type": "string", "format": "date-time"},
    "deliveries": {"type": "object", "additionalProperties": {"type": "integer"}, "description": "Deliveries per channel"},
    "early": {"type": "boolean", "description": "Begins before its nominal time to end by then (reminders), rather than spread from its moment"}}},
 "NewWindow": {"type": "object", "additionalProperties": False, "required": ["title", "components", "starts_at", "ends_at"], "properties": {
    "title": {"type": "string", "maxLength": 200}, "title_sw": {"type": "string"}, "description": {"type": "string", "maxLength": 2000}, "description_sw": {"type": "string"},
    "components": {"type": "array", "items": {"type": "string"}, "minItems": 1}, "starts_at": {"type": "string", "description": "RFC 3339, or YYYY-MM-DD HH:MM in zone"},
    "ends_at": {"type": "string"}, "zone": {"type": "string", "description": "IANA zone [default: the configured default zone]"}, "auto_complete": {"type": "boolean"}}},
 "Reschedule": {"type": "object", "additionalProperties": False, "required": ["starts_at", "ends_at"], "properties": {"starts_at": {"type": "string"}, "ends_at": {"type": "string"}, "zone": {"type": "string"}, "expected_revision": {"type": "integer"}}},
 "Extend": {"type": "object", "additionalProperties": False, "required": ["ends_at"], "properties": {"ends_at": {"type": "string"}, "zone": {"type": "string"}, "expected_revision": {"type": "integer"}}},
 "Cancel": {"type": "object", "additionalProperties": False, "properties": {"reason": {"type": "string", "maxLength": 500}, "reason_sw": {"type": "string", "maxLength": 500}, "expected_revision": {"type": "integer"}}},
 "Complete": {"type": "object", "additionalProperties": False, "properties": {"expected_revision": {"type": "integer"}}},
 "Subscription": {"type": "object", "required": ["id", "url", "events", "components", "enabled"], "properties": {
    "id": {"type": "integer"}, "url": {"type": "string", "format": "uri"}, "events": {"type": "array", "items": events_enum, "description": "Empty: every event type"},
    "components": {"type": "array", "items": {"type": "string"}, "description": "Empty: every component"}, "enabled": {"type": "boolean"},
    "disabled_reason": {"type": "string"}, "previous_secret_until": {"type": "string", "format": "date-time"}}},
 "SubscriptionWithSecret": {"allOf": [ref("Subscription"), {"type": "object", "required": ["secret"], "properties": {"secret": {"type": "string", "description": "whsec_…: Standard Webhooks signing secret, shown only now"}}}]},
 "NewSubscription": {"type": "object", "additionalProperties": False, "required": ["url"], "properties": {
    "url": {"type": "string", "description": "https (public addresses only)"}, "events": {"type": "array", "items": events_enum}, "components": {"type": "array", "items": {"type": "string"}}}},
 "SubscriptionPatch": {"type": "object", "additionalProperties": False, "properties": {
    "url": {"type": "string"}, "events": {"type": "array", "items": events_enum}, "components": {"type": "array", "items": {"type": "string"}}, "enabled": {"type": "boolean"}}},
 "BroadcastRequest": {"type": "object", "additionalProperties": False, "properties": {
    "window_id": {"type": "integer"}, "notice": {"type": "string", "description": "announced, reminder:24h, started, rescheduled, cancelled, completed"},
    "message": {"type": "string"}, "message_sw": {"type": "string"}, "subject": {"type": "string"}, "subject_sw": {"type": "string"},
    "audience": {"type": "string", "enum": ["customers", "billers", "all"]}, "components": {"type": "array", "items": {"type": "string"}},
    "channels": {"type": "array", "items": {"type": "string", "enum": ["sms", "email", "webhook"]}}, "locale": {"type": "string", "enum": ["en", "sw"]},
    "name": {"type": "string", "maxLength": 120}, "deadline": {"type": "string"}, "dry_run": {"type": "boolean"},
    "confirm": {"type": "boolean", "description": "Needed above broadcast.confirm_above recipients"}}},
 "Event": {"type": "object", "required": ["id", "webhook_id_prefix", "created_at", "type", "data"], "properties": {
    "id": {"type": "integer", "description": "The cursor"}, "webhook_id_prefix": {"type": "string", "description": "webhook-id is this followed by .e{subscription id}"},
    "created_at": {"type": "string", "format": "date-time"}, "type": {"type": "string"}, "data": {"type": "object", "description": "As in templates/webhook-event-v1.schema.json"}}},
 "Attempt": {"type": "object", "required": ["at", "outcome", "latency_ms"], "properties": {"at": {"type": "string", "format": "date-time"}, "outcome": {"type": "string"},
    "status": {"type": ["string", "null"]}, "latency_ms": {"type": "integer"}, "response": {"type": ["string", "null"], "description": "The error or answer, truncated"}}},
}
doc = {
 "openapi": "3.1.0",
 "info": {"title": "Tangazo", "version": "1", "description": "Maintenance-window notices: the billers' subscription API, the operator API, public windows and feeds, and providers' callbacks. Errors are RFC 9457 problem documents."},
 "paths": paths,
 "components": {
   "schemas": schemas,
   "responses": {"Problem": problem},
   "securitySchemes": {
     "billerToken": {"type": "http", "scheme": "bearer", "description": "A biller's API token (tgz_…), from tangazo billers add"},
     "adminToken": {"type": "http", "scheme": "bearer", "description": "http.admin_token"}}},
}
print(json.dumps(doc, indent=2))
