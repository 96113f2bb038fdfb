#!/bin/sh
# An example ah-worker `coprocess` plugin in plain POSIX sh (+ sed, printf).
#
# ah-worker starts this script once and keeps it running. It sends us one
# JSON object per line on stdin; we answer with one JSON object per line on
# stdout. See docs/plugin-protocol.md for the whole protocol.
#
# This plugin runs one job at a time, so declare it with `in_flight = 1`
# (see plugin.toml): the worker then never sends a second job before the
# first one's result.
#
# Classes handled here (declared as "Sh::*" in plugin.toml):
#
#   Sh::Echo     succeeds
#   Sh::Fail     fails with error "shell says no"
#   Sh::Enqueue  enqueues AhWorker::Noop (args []) on the queue named by
#                args[0], waits for the worker's reply, then succeeds
#
# Try it by hand:
#
#   printf '%s\n' '{"type":"job","id":"1","class":"Sh::Echo","queue":"q","args":[]}' \
#       | sh examples/plugins/shell/coprocess.sh
#
# --- About the JSON "parsing" ----------------------------------------------
#
# sh has no JSON parser, so string_after below pulls single fields out of a
# line with sed. That is only good enough because of what it assumes:
#
#   * the line is compact JSON, as the worker writes it: "key":"value" with
#     no spaces around the colon;
#   * the value is a string without escaped quotes (\") in it. That holds for
#     the fields read here: "type", "id" and "class" (Resque class names and
#     the worker's job ids contain no quotes);
#   * the first occurrence of "key":" on the line is the top-level one. The
#     worker writes "type", "id" and "class" before "args", so an "id" nested
#     inside the args (e.g. [{"id":"x"}]) comes later and is not picked up.
#
# Anything more (reading nested args, strings with escapes) needs a real
# parser: use jq if you have it, or write the plugin in another language.

# string_after PATTERN LINE
# Prints the text after the first match of the sed pattern PATTERN in LINE,
# up to the next quote (nothing if PATTERN does not match).
string_after() {
    # On a matching line: replace the first match with a newline, drop
    # everything up to that newline, then everything from the next quote on.
    printf '%s\n' "$2" | sed -n "/$1/{
        s//\\
/
        s/.*\\n//
        s/\".*//
        p
    }"
}

# json_string KEY LINE: the value of the first "KEY":"value" in LINE.
json_string() { string_after "\"$1\":\"" "$2"; }

# first_string_arg LINE: args[0] of a job line, if it is a string.
first_string_arg() { string_after '"args":\["' "$1"; }

# Messages to the worker. Each printf writes one whole line; values put into
# the JSON here must not contain quotes or backslashes (ours do not).
succeed() {
    printf '{"type":"result","id":"%s","ok":true}\n' "$1"
}
fail() { # fail JOB_ID EXCEPTION ERROR
    printf '{"type":"result","id":"%s","ok":false,"exception":"%s","error":"%s","backtrace":["coprocess.sh"]}\n' \
        "$1" "$2" "$3"
}

calls=0 # counter for unique call ids

# Sh::Enqueue: send a `call`, then read stdin until the `reply` with our call
# id arrives. Other lines read meanwhile are ignored (with in_flight = 1 no
# other job can arrive while this one runs).
enqueue_noop() { # enqueue_noop JOB_ID JOB_LINE
    queue=$(first_string_arg "$2")
    [ -n "$queue" ] || queue=default
    calls=$((calls + 1))
    call_id="sh-$calls"
    printf '{"type":"call","id":"%s","job":"%s","method":"enqueue","params":{"class":"AhWorker::Noop","queue":"%s","args":[]}}\n' \
        "$call_id" "$1" "$queue"

    while IFS= read -r reply; do
        [ "$(json_string type "$reply")" = reply ] || continue
        [ "$(json_string id "$reply")" = "$call_id" ] || continue
        case $reply in
        *'"ok":true'*)
            succeed "$1" ;;
        *)
            # The worker's error may contain quotes or backslashes, which this
            # script cannot safely copy into its own JSON: pass it on through
            # stderr (the worker logs stderr) and fail with a fixed message.
            printf 'enqueue refused: %s\n' "$reply" >&2
            fail "$1" RuntimeError "enqueue refused by the worker (see the plugin's log)" ;;
        esac
        return
    done
    # EOF before the reply: the worker is shutting down.
    fail "$1" RuntimeError "stdin closed before the reply"
}

# The main loop: one line, one message. `read` returns non-zero at EOF (the
# worker is shutting down), which ends the loop and the script with status 0.
while IFS= read -r line; do
    # Only jobs matter here; replies outside a call and unknown types are
    # ignored, so newer workers can add messages.
    [ "$(json_string type "$line")" = job ] || continue
    id=$(json_string id "$line")
    class=$(json_string class "$line")

    case $class in
    Sh::Echo)    succeed "$id" ;;
    Sh::Fail)    fail "$id" RuntimeError "shell says no" ;;
    Sh::Enqueue) enqueue_noop "$id" "$line" ;;
    *)           fail "$id" NameError "unknown class $class" ;;
    esac
done
exit 0
