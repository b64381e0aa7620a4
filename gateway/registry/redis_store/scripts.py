"""Lua scripts: each runs atomically in Redis, so indexes never disagree with documents.

Every key a script touches is passed in KEYS (Redis Cluster routes on them; the
prefix's hash tag keeps them in one slot).  Scripts are loaded by SHA and
reloaded by redis-py on NOSCRIPT, e.g. after a Redis restart.
"""

from __future__ import annotations

# KEYS: index, clients.  ARGV: index fields.
# Returns one entry per field (the space-separated client_ids, or ""), then
# (client_id, document) pairs for every client named: one round trip per miss.
LOOKUP = """
local out = {}
local wanted = {}
local seen = {}
local hits = redis.call('HMGET', KEYS[1], unpack(ARGV))
for i = 1, #ARGV do
  local ids = hits[i]
  if ids then
    out[i] = ids
    for id in string.gmatch(ids, '%S+') do
      if not seen[id] then
        seen[id] = true
        wanted[#wanted + 1] = id
      end
    end
  else
    out[i] = ''
  end
end
if #wanted > 0 then
  local docs = redis.call('HMGET', KEYS[2], unpack(wanted))
  for i = 1, #wanted do
    out[#out + 1] = wanted[i]
    out[#out + 1] = docs[i] or ''
  end
end
return out
"""

# KEYS: clients, index, meta.
# ARGV: channel, client_id, expected current document ("" = absent), new document
# ("" = remove), epoch to set if none, change payload, number of old fields,
# old fields..., new fields...
# Compare-and-set on the document: the caller computed the old fields from the
# document it read, so a concurrent write in between returns -1 and is retried.
PUT = """
local id = ARGV[2]
local current = redis.call('HGET', KEYS[1], id)
if (current or '') ~= ARGV[3] then
  return -1
end
local function without(list, member)
  local kept = {}
  for item in string.gmatch(list, '%S+') do
    if item ~= member then kept[#kept + 1] = item end
  end
  return table.concat(kept, ' ')
end
local n_old = tonumber(ARGV[7])
for i = 8, 7 + n_old do
  local ids = redis.call('HGET', KEYS[2], ARGV[i])
  if ids then
    local rest = without(ids, id)
    if rest == '' then
      redis.call('HDEL', KEYS[2], ARGV[i])
    else
      redis.call('HSET', KEYS[2], ARGV[i], rest)
    end
  end
end
for i = 8 + n_old, #ARGV do
  local rest = without(redis.call('HGET', KEYS[2], ARGV[i]) or '', id)
  if rest == '' then
    redis.call('HSET', KEYS[2], ARGV[i], id)
  else
    redis.call('HSET', KEYS[2], ARGV[i], rest .. ' ' .. id)
  end
end
if ARGV[4] == '' then
  redis.call('HDEL', KEYS[1], id)
else
  redis.call('HSET', KEYS[1], id, ARGV[4])
end
redis.call('HSETNX', KEYS[3], 'epoch', ARGV[5])
local generation = redis.call('HINCRBY', KEYS[3], 'generation', 1)
local epoch = redis.call('HGET', KEYS[3], 'epoch')
redis.call('PUBLISH', ARGV[1], generation .. ' ' .. epoch .. ' ' .. ARGV[6])
return generation
"""

# KEYS: clients, index, meta, staged clients, staged index.
# ARGV: channel, epoch to set if none, expected number of clients, expected
# number of index fields.
# The staged hashes were filled (pipelined, not atomically) under a private
# name; this swaps them in as one step.  UNLINK frees the old hashes in a
# background thread, so a million-client registry does not stall Redis.
SWAP = """
local n_clients = tonumber(ARGV[3])
local n_fields = tonumber(ARGV[4])
if redis.call('HLEN', KEYS[4]) ~= n_clients or redis.call('HLEN', KEYS[5]) ~= n_fields then
  return -1
end
redis.call('UNLINK', KEYS[1], KEYS[2])
if n_clients > 0 then
  redis.call('PERSIST', KEYS[4])
  redis.call('RENAME', KEYS[4], KEYS[1])
end
if n_fields > 0 then
  redis.call('PERSIST', KEYS[5])
  redis.call('RENAME', KEYS[5], KEYS[2])
end
redis.call('HSETNX', KEYS[3], 'epoch', ARGV[2])
local generation = redis.call('HINCRBY', KEYS[3], 'generation', 1)
local epoch = redis.call('HGET', KEYS[3], 'epoch')
redis.call('PUBLISH', ARGV[1], generation .. ' ' .. epoch .. ' *')
return generation
"""
