"""The Redis queue engine's keys and Lua scripts (app/jobs/redis.py): each script is one atomic
step on a job's keys, so that a status change is a compare-and-set and a job is queued (or
queued again) together with its stream entry.

Keys (all under `cutout:`):
    job:{id}            hash: status, doc (JSON, app/jobs/model.py), entry (its stream entry id)
    jobin:{id}          hash: meta, image, bg_image (deleted when the job ends)
    jobout:{id}         the result's bytes, expiring job_ttl_s after the job ends
    jobs:stream         the queue; group `runners`
    jobs:deadlines      sorted set of queued job ids by deadline (expiry of jobs nobody ran)
    jobs:queued         sorted set of queued job ids by their turn (jobs:seq when queued): positions
    jobs:seq            the counter that numbers each queueing, in the order of the stream's entries
    batch:{id}          hash: doc
    webhooks            sorted set of due webhooks ("job:{id}" / "batch:{id}") by due time
    jobsub:{digest}     an Idempotency-Key's submission: fingerprint, kind, id (expires with its window)
    jobs:master         the key every account's webhook secret derives from
"""

from __future__ import annotations

PREFIX = "cutout:"
STREAM = PREFIX + "jobs:stream"
GROUP = "runners"
DEADLINES = PREFIX + "jobs:deadlines"
QUEUED = PREFIX + "jobs:queued"
SEQ = PREFIX + "jobs:seq"
WEBHOOKS = PREFIX + "webhooks"
MASTER = PREFIX + "jobs:master"
# A batch's key expires this long after its submission at the latest (its completion sets job_ttl_s), so a
# batch whose completion was never recorded does not stay forever.
BATCH_BACKSTOP_S = 7 * 86400


def job_key(job_id: str) -> str:
    return f"{PREFIX}job:{job_id}"


def input_key(job_id: str) -> str:
    return f"{PREFIX}jobin:{job_id}"


def result_key(job_id: str) -> str:
    return f"{PREFIX}jobout:{job_id}"


def batch_key(batch_id: str) -> str:
    return f"{PREFIX}batch:{batch_id}"


# ARGV: prefix, idem key ('' = none), fingerprint, window ms, kind, ref, batch id ('' = none), batch doc,
#       batch ttl s, an ended job's ttl ms, then per job: id, status, doc, deadline, meta, image, bg_image
SUBMIT = """
local p = ARGV[1]
if ARGV[2] ~= '' then
    local seen = redis.call('HMGET', ARGV[2], 'fingerprint', 'kind', 'ref')
    if seen[1] then
        if seen[1] ~= ARGV[3] then return {'conflict'} end
        return {'replay', seen[2], seen[3]}
    end
    redis.call('HSET', ARGV[2], 'fingerprint', ARGV[3], 'kind', ARGV[5], 'ref', ARGV[6])
    redis.call('PEXPIRE', ARGV[2], ARGV[4])
end
if ARGV[7] ~= '' then
    redis.call('HSET', p .. 'batch:' .. ARGV[7], 'doc', ARGV[8])
    redis.call('EXPIRE', p .. 'batch:' .. ARGV[7], ARGV[9])
end
local i = 11
while i <= #ARGV do
    local id = ARGV[i]
    redis.call('HSET', p .. 'job:' .. id, 'status', ARGV[i + 1], 'doc', ARGV[i + 2])
    if ARGV[i + 1] == 'queued' then
        redis.call('HSET', p .. 'jobin:' .. id, 'meta', ARGV[i + 4], 'image', ARGV[i + 5], 'bg_image', ARGV[i + 6])
        local entry = redis.call('XADD', p .. 'jobs:stream', '*', 'job', id)
        redis.call('HSET', p .. 'job:' .. id, 'entry', entry)
        redis.call('ZADD', p .. 'jobs:deadlines', ARGV[i + 3], id)
        redis.call('ZADD', p .. 'jobs:queued', redis.call('INCR', p .. 'jobs:seq'), id)
    else
        redis.call('PEXPIRE', p .. 'job:' .. id, ARGV[10])
    end
    i = i + 7
end
return {'ok', ARGV[5], ARGV[6]}
"""

# KEYS: job, queued, deadlines
# ARGV: job id, new status, new doc, when the record goes (Unix ms; '' = never), expected statuses...
UPDATE = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return 0 end
local ok = false
for i = 5, #ARGV do if ARGV[i] == status then ok = true end end
if not ok then return 0 end
redis.call('HSET', KEYS[1], 'status', ARGV[2], 'doc', ARGV[3])
if ARGV[2] ~= 'queued' then
    redis.call('ZREM', KEYS[2], ARGV[1])
    redis.call('ZREM', KEYS[3], ARGV[1])
end
if ARGV[4] ~= '' then
    redis.call('PEXPIREAT', KEYS[1], ARGV[4])
end
return 1
"""

# KEYS: queued   ARGV: job id. How many queued jobs are ahead of this one; -1 when it is not queued.
POSITION = """
local turn = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not turn then return -1 end
return redis.call('ZCOUNT', KEYS[1], '-inf', '(' .. turn)
"""

# KEYS: job, stream   ARGV: group, consumer
HEARTBEAT = """
local entry = redis.call('HGET', KEYS[1], 'entry')
if not entry then return 0 end
local pending = redis.call('XPENDING', KEYS[2], ARGV[1], entry, entry, 1)
if #pending == 0 or pending[1][2] ~= ARGV[2] then return 0 end
redis.call('XCLAIM', KEYS[2], ARGV[1], ARGV[2], 0, entry, 'JUSTID')
return 1
"""

# KEYS: job, stream, deadlines, queued, seq   ARGV: group, consumer, doc, job id, deadline
REQUEUE = """
if redis.call('HGET', KEYS[1], 'status') ~= 'running' then return 0 end
local entry = redis.call('HGET', KEYS[1], 'entry')
if entry then
    redis.call('XACK', KEYS[2], ARGV[1], entry)
    redis.call('XDEL', KEYS[2], entry)
end
local fresh = redis.call('XADD', KEYS[2], '*', 'job', ARGV[4])
redis.call('HSET', KEYS[1], 'status', 'queued', 'doc', ARGV[3], 'entry', fresh)
redis.call('ZADD', KEYS[3], ARGV[5], ARGV[4])
redis.call('ZADD', KEYS[4], redis.call('INCR', KEYS[5]), ARGV[4])  -- the back of the line, as its fresh entry
return 1
"""

# KEYS: webhooks   ARGV: now, lease until
DUE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, 50)
for _, target in ipairs(due) do redis.call('ZADD', KEYS[1], ARGV[2], target) end
return due
"""


def as_text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, str):
        return value
    raise TypeError(f"expected bytes or str from Redis, got {type(value).__name__}")


def as_bytes(value: object) -> bytes | None:
    """A binary value as redis-py answers it without decoding (None, and empty, as None)."""
    if value is None or value == b"":
        return None
    if isinstance(value, bytes):
        return value
    raise TypeError(f"expected bytes from Redis, got {type(value).__name__}")
