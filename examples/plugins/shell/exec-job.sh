#!/bin/sh
# An example ah-worker `exec` plugin: the smallest kind of plugin there is.
#
# ah-worker runs this script once per job (see exec-plugin.toml) and:
#   * writes the job object as JSON to stdin, then closes stdin;
#   * sets AH_JOB_ID, AH_JOB_CLASS, AH_JOB_QUEUE, AH_JOB_WORKER,
#     AH_JOB_RUN_AT and AH_JOB_ARGS (the args array as JSON);
#   * logs every line written to stdout and stderr;
#   * counts exit status 0 as success, anything else as a failure whose
#     error is the last non-empty line of stderr.
#
# Try it by hand:
#
#   echo '{"args":["fail"]}' | AH_JOB_CLASS=ShExec::Demo AH_JOB_QUEUE=low \
#       AH_JOB_ARGS='["fail"]' sh examples/plugins/shell/exec-job.sh

# Read the whole job object. This script only needs the environment, but
# reading stdin is a good habit: the worker's write then never meets a closed
# pipe. (To read nested args, feed "$job" to a JSON tool such as jq.)
job=$(cat)
if [ -z "$job" ]; then
    echo "refusing: no job object on stdin" >&2
    exit 1
fi

echo "processing $AH_JOB_CLASS from $AH_JOB_QUEUE"

# Refuse jobs whose args contain the word "fail", e.g. ["fail"] or
# [{"mode":"fail"}] (but not "failure"). AH_JOB_ARGS is a JSON array, so
# the word always has a character on each side: at least "[" and "]".
case $AH_JOB_ARGS in
*[!A-Za-z0-9_]fail[!A-Za-z0-9_]*)
    echo "refusing: args $AH_JOB_ARGS contain \"fail\"" >&2
    exit 1
    ;;
esac

exit 0
