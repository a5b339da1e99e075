#include "mp_rpc.h"

#include <string.h>

#include "mp_json.h"

static int mp__valid_id(const json_t *id)
{
    return json_is_string(id) || json_is_integer(id) || json_is_real(id) || json_is_null(id);
}

int mp_rpc_parse(const char *buf, size_t len, const mp_limits *lim, mp_msg *out, json_t **id_out, mp_err *e)
{
    memset(out, 0, sizeof *out);
    *id_out = NULL;
    if (len == 0)
        return mp_err_set(e, MP_PARSE_ERROR, NULL, "Parse error: empty message");
    /* The fast parser accepts what json_loadb(JSON_REJECT_DUPLICATES |
     * JSON_DECODE_ANY) accepts; when it refuses, the depth check and jansson
     * say why. JSON_DECODE_ANY: a bare scalar ("42") is valid JSON that is not
     * a request, so it gets -32600 like an array would, not -32700 (MAP.md 1.2
     * rule 7). */
    json_t *root = mp_json_parse(buf, len, lim->max_depth);
    if (!root) {
        if (mp_json_depth(buf, len, lim->max_depth) > lim->max_depth)
            return mp_err_set(e, MP_PARSE_ERROR, NULL, "Parse error: JSON nested deeper than %d levels",
                              lim->max_depth);
        json_error_t je;
        root = json_loadb(buf, len, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &je);
        if (!root)
            return mp_err_set(e, MP_PARSE_ERROR, NULL, "Parse error: %s at offset %d", je.text, je.position);
    }

    if (json_is_array(root)) {
        json_decref(root);
        return mp_err_set(e, MP_INVALID_REQUEST, NULL, "Invalid request: batches are not supported");
    }
    if (!json_is_object(root)) {
        json_decref(root);
        return mp_err_set(e, MP_INVALID_REQUEST, NULL, "Invalid request: message must be a JSON object");
    }

    json_t *id = json_object_get(root, "id");
    if (id && mp__valid_id(id))
        *id_out = json_incref(id);

    const char *ver = json_string_value(json_object_get(root, "jsonrpc"));
    if (!ver || strcmp(ver, "2.0") != 0) {
        json_decref(root);
        return mp_err_set(e, MP_INVALID_REQUEST, "jsonrpc", "Invalid request: \"jsonrpc\" must be \"2.0\"");
    }
    if (id && !mp__valid_id(id)) {
        json_decref(root);
        return mp_err_set(e, MP_INVALID_REQUEST, "id", "Invalid request: \"id\" must be a string, number or null");
    }

    json_t *method = json_object_get(root, "method");
    if (!method) {
        /* A response carries exactly one of result / error (MAP.md 1.2). */
        if (id && (json_object_get(root, "result") != NULL) != (json_object_get(root, "error") != NULL)) {
            out->kind = MP_KIND_RESPONSE;
            out->root = root;
            out->id = id;
            json_decref(*id_out);
            *id_out = NULL;
            return 0;
        }
        json_decref(root);
        return mp_err_set(e, MP_INVALID_REQUEST, "method", "Invalid request: missing \"method\"");
    }
    if (!json_is_string(method) || json_string_length(method) == 0 ||
        json_string_length(method) > lim->max_method || strlen(json_string_value(method)) != json_string_length(method)) {
        json_decref(root);
        return mp_err_set(e, MP_INVALID_REQUEST, "method", "Invalid request: \"method\" must be a non-empty string of at most %zu bytes",
                          lim->max_method);
    }

    json_t *params = json_object_get(root, "params");
    if (!params || json_is_null(params)) {
        params = json_object();
        json_object_set_new(root, "params", params);
    } else if (!json_is_object(params)) {
        json_decref(root);
        return mp_err_set(e, MP_INVALID_PARAMS, "params", "Invalid params: \"params\" must be an object");
    }

    out->kind = id ? MP_KIND_REQUEST : MP_KIND_NOTIFICATION;
    out->root = root;
    out->id = id;
    out->method = json_string_value(method);
    out->params = params;
    json_decref(*id_out);
    *id_out = NULL;
    return 0;
}

void mp_msg_free(mp_msg *m)
{
    json_decref(m->root);
    memset(m, 0, sizeof *m);
}

json_t *mp_rpc_result(json_t *id, json_t *result)
{
    if (!result)
        result = json_object();
    json_t *o = json_object();
    json_object_set_new(o, "jsonrpc", json_string("2.0"));
    json_object_set(o, "id", id ? id : json_null());
    json_object_set_new(o, "result", result);
    return o;
}

json_t *mp_rpc_error(json_t *id, const mp_err *e)
{
    json_t *err = mp_err_json(e);
    if (!err)
        err = json_pack("{s:i,s:s}", "code", MP_INTERNAL, "message", "Internal error");
    json_t *o = json_object();
    json_object_set_new(o, "jsonrpc", json_string("2.0"));
    json_object_set(o, "id", id ? id : json_null());
    json_object_set_new(o, "error", err);
    return o;
}

json_t *mp_rpc_notification(const char *method, json_t *params)
{
    json_t *o = json_object();
    json_object_set_new(o, "jsonrpc", json_string("2.0"));
    json_object_set_new(o, "method", json_string(method));
    json_object_set_new(o, "params", params ? params : json_object());
    return o;
}
