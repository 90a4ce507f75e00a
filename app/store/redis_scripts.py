"""The Redis store's Lua scripts: each balance change is one script, so it is atomic on the server."""

# KEYS: acct, resv, resv:held, idem (or a placeholder)
# ARGV: amount, reservation id, now, fingerprint ('' = none), window ms, account id, hold until
RESERVE = """
local credits = tonumber(redis.call('HGET', KEYS[1], 'credits'))
if not credits then return {'unknown', 0} end
if redis.call('EXISTS', KEYS[2]) == 1 then return {'ok', credits} end
local fingerprint = ARGV[4]
if fingerprint ~= '' then
    local seen = redis.call('HMGET', KEYS[4], 'fingerprint', 'state', 'answer_type', 'answer')
    if seen[1] then
        if seen[1] ~= fingerprint then return {'mismatch', credits} end
        if seen[2] == 'done' then return {'replay', credits, seen[3] or '', seen[4] or ''} end
        return {'in_flight', credits}
    end
end
local amount = tonumber(ARGV[1])
if credits < amount then return {'insufficient', credits} end
-- Nothing to take (an unlimited account): HINCRBY would refuse Lua's -0.
local left = credits
if amount > 0 then left = redis.call('HINCRBY', KEYS[1], 'credits', -amount) end
local idem = ''
if fingerprint ~= '' then
    idem = KEYS[4]
    redis.call('HSET', idem, 'fingerprint', fingerprint, 'reservation', ARGV[2], 'state', 'pending')
    redis.call('PEXPIRE', idem, ARGV[5])
end
redis.call('HSET', KEYS[2], 'account', ARGV[6], 'amount', amount, 'idem', idem, 'created_at', ARGV[3], 'state', 'held',
    'hold_until', ARGV[7])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[2])
return {'ok', left}
"""

# KEYS: resv, resv:held, ledger, acct
# ARGV: reservation id, now, settled ttl s, window ms, ledger max, answer type ('' = none), answer (base64),
# amount charged ('' = all reserved; less gives the rest back)
COMMIT = """
local r = redis.call('HMGET', KEYS[1], 'account', 'amount', 'idem', 'state')
if r[4] == 'charged' then return 1 end
if r[4] ~= 'held' then return 0 end
local charged = tonumber(r[2])
if ARGV[8] ~= '' and tonumber(ARGV[8]) < charged then
    redis.call('HINCRBY', KEYS[4], 'credits', charged - tonumber(ARGV[8]))
    charged = tonumber(ARGV[8])
end
redis.call('HSET', KEYS[1], 'state', 'charged')
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('ZREM', KEYS[2], ARGV[1])
if r[3] ~= '' then
    redis.call('HSET', r[3], 'state', 'done')
    if ARGV[6] ~= '' then redis.call('HSET', r[3], 'answer_type', ARGV[6], 'answer', ARGV[7]) end
    redis.call('PEXPIRE', r[3], ARGV[4])
end
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[5], '*',
    'account', r[1], 'delta', -charged, 'reason', 'charge', 'ref', ARGV[1], 'at', ARGV[2])
return 1
"""

# KEYS: resv, resv:held, acct   ARGV: reservation id, settled ttl s
REFUND = """
local r = redis.call('HMGET', KEYS[1], 'amount', 'idem', 'state')
if r[3] == 'held' then
    redis.call('HINCRBY', KEYS[3], 'credits', r[1])
    redis.call('HSET', KEYS[1], 'state', 'refunded')
    redis.call('EXPIRE', KEYS[1], ARGV[2])
    -- The key is free again: nothing was charged under it, so a retry must run.
    if r[2] ~= '' and redis.call('HGET', r[2], 'reservation') == ARGV[1] then
        redis.call('DEL', r[2])
    end
end
redis.call('ZREM', KEYS[2], ARGV[1])
return tonumber(redis.call('HGET', KEYS[3], 'credits') or 0)
"""

# KEYS: acct, ledger   ARGV: delta, reason, now, ledger max, account id, clamp ('1' or '0')
# Returns {'ok', balance}, {'insufficient', balance} (nothing changed) or {'unknown', 0}.
ADJUST = """
local credits = tonumber(redis.call('HGET', KEYS[1], 'credits'))
if not credits then return {'unknown', 0} end
local delta = tonumber(ARGV[1])
if credits + delta < 0 then
    if ARGV[6] ~= '1' then return {'insufficient', credits} end
    delta = -credits
end
redis.call('HSET', KEYS[1], 'credits', credits + delta)
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*',
    'account', ARGV[5], 'delta', delta, 'reason', ARGV[2], 'at', ARGV[3])
return {'ok', credits + delta}
"""

# KEYS: acct, new key:{sha256}   ARGV: new key hash, key prefix, account id
# The old key's entry goes in the same step as the new one comes: no moment with both or neither.
ROTATE = """
local old = redis.call('HGET', KEYS[1], 'key_hash')
if not old then return 0 end
redis.call('DEL', ARGV[2] .. old)
redis.call('SET', KEYS[2], ARGV[3])
redis.call('HSET', KEYS[1], 'key_hash', ARGV[1])
return 1
"""

# KEYS: acct   ARGV: field, value, field, value, ...
UPDATE_FIELDS = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV))
return 1
"""
