-- Portcullis limiter, part 1 of 2: the arithmetic. The crate joins this file and operations.lua into one
-- script holding every state change of the Redis limiter (see the crate docs).
--
-- ARGV[1] names the operation: admit, settle, renew, snapshot, seed. KEYS come in triples, one per scope:
-- the scope's state hash, its lease sorted set and its holds hash. Every operation first expires the
-- overdue leases of the scopes it touches, then does its work; Redis runs a script atomically, so an
-- admission checks every scope and then applies to all of them, or applies nothing.
--
-- The rules are those of `portcullis_limits` (gcra.rs, bucket.rs, window.rs, scope.rs), transcribed with
-- the same integer arithmetic. Lua numbers are doubles, exact for integers below 2^53:
-- * window amounts (tokens and pico-units of money, u64 up to 1.8e19) are two limbs {hi, lo} in base 1e9,
--   stored as decimal strings;
-- * times (ms), rates and counts stay below 2^53 within the domain the Rust side clamps limits to: a
--   GCRA TAT is kept as (ms, rem) = ms * rpm + rem ticks, never multiplied out, and token-bucket units
--   (60 000 per token) fit because the token rate is capped.
-- Every division goes through floordiv, which corrects the rounding of `/`.

local BASE = 1000000000
local U64_MAX = {18446744073, 709551615}
local ZERO = {0, 0}
local INTERVAL = 60000 -- GCRA emission interval, in ticks of 1/rpm ms
local UNITS = 60000 -- token-bucket units per token

-- Integers -----------------------------------------------------------------------------------------

-- floor(a / b) for integers a, b (b > 0) whose magnitudes are below 2^53.
local function floordiv(a, b)
  local q = math.floor(a / b)
  local r = a - q * b
  if r < 0 then
    q = q - 1
  elseif r >= b then
    q = q + 1
  end
  return q
end

local function ceildiv(a, b)
  return -floordiv(-a, b)
end

local function fmt(n)
  return string.format('%.0f', n)
end

-- A number argument or field; '' and missing (false) are nil.
local function num(s)
  if s == nil or s == false or s == '' then
    return nil
  end
  return tonumber(s)
end

-- u64 as limbs {hi, lo}, value = hi * 1e9 + lo ----------------------------------------------------

local function u(s)
  if s == nil or s == false or s == '' then
    return nil
  end
  local n = #s
  if n <= 9 then
    return {0, tonumber(s)}
  end
  return {tonumber(string.sub(s, 1, n - 9)), tonumber(string.sub(s, n - 8))}
end

local function ustr(a)
  local lo = fmt(a[2])
  if a[1] == 0 then
    return lo
  end
  return fmt(a[1]) .. string.rep('0', 9 - #lo) .. lo
end

local function ucmp(a, b)
  if a[1] ~= b[1] then
    return a[1] < b[1] and -1 or 1
  end
  if a[2] ~= b[2] then
    return a[2] < b[2] and -1 or 1
  end
  return 0
end

local function uzero(a)
  return a[1] == 0 and a[2] == 0
end

-- Exact sum, possibly above u64::MAX (hi stays far below 2^53).
local function uadd_exact(a, b)
  local hi, lo = a[1] + b[1], a[2] + b[2]
  if lo >= BASE then
    hi, lo = hi + 1, lo - BASE
  end
  return {hi, lo}
end

-- Sum that stops at u64::MAX, like u64::saturating_add.
local function uadd(a, b)
  local sum = uadd_exact(a, b)
  if ucmp(sum, U64_MAX) > 0 then
    return U64_MAX
  end
  return sum
end

-- Difference that stops at zero, like u64::saturating_sub.
local function usub(a, b)
  if ucmp(a, b) <= 0 then
    return ZERO
  end
  local hi, lo = a[1] - b[1], a[2] - b[2]
  if lo < 0 then
    hi, lo = hi - 1, lo + BASE
  end
  return {hi, lo}
end

local function umin(a, b)
  if ucmp(a, b) <= 0 then
    return a
  end
  return b
end

local function umax(a, b)
  if ucmp(a, b) >= 0 then
    return a
  end
  return b
end

-- The value as a double: exact below 2^53, and above it still larger than any number below 2^53.
local function unum(a)
  return a[1] * BASE + a[2]
end

-- GCRA (gcra.rs) -------------------------------------------------------------------------------------

-- The TAT in ticks of 1/rpm ms, converted (rounding up) if it was written under another rpm.
local function gcra_tat(s, rpm)
  if s.gp == rpm or s.gp == 0 then
    return s.gt, s.gr
  end
  -- gr < gp, so the converted remainder is at most rpm.
  local rem = ceildiv(s.gr * rpm, s.gp)
  if rem >= rpm then
    return s.gt + 1, 0
  end
  return s.gt, rem
end

-- Ticks by which the TAT is ahead of now (0 when idle); math.huge when beyond `cap` ticks, where the
-- exact value does not matter and might not be exact.
local function gcra_ahead(ms, rem, rpm, now, cap)
  local d = ms - now
  if d < 0 then
    return 0
  end
  if d > floordiv(cap, rpm) + 1 then
    return math.huge
  end
  return d * rpm + rem
end

-- nil if one request fits at now, else the wait in ms (rounded up).
local function gcra_check(s, rpm, burst, now)
  local ms, rem = gcra_tat(s, rpm)
  local tolerance = (burst - 1) * INTERVAL
  if gcra_ahead(ms, rem, rpm, now, burst * INTERVAL) <= tolerance then
    return nil
  end
  -- ceil((d * rpm + rem - tolerance) / rpm) with d = ms - now >= 0
  return (ms - now) + ceildiv(rem - tolerance, rpm)
end

local function gcra_take(s, rpm, now)
  local ms, rem = gcra_tat(s, rpm)
  if ms < now then
    ms, rem = now, 0
  end
  rem = rem + INTERVAL
  local carry = floordiv(rem, rpm)
  s.gt, s.gr, s.gp = ms + carry, rem - carry * rpm, rpm
end

local function gcra_remaining(s, rpm, burst, now)
  local ms, rem = gcra_tat(s, rpm)
  local capacity = burst * INTERVAL
  local free = capacity - gcra_ahead(ms, rem, rpm, now, capacity)
  if free <= 0 then
    return 0
  end
  return floordiv(free, INTERVAL)
end

local function gcra_reset(s, rpm, now)
  local ms, rem = gcra_tat(s, rpm)
  local d = ms - now
  if d < 0 then
    return 0
  end
  -- ceil((d * rpm + rem) / rpm), rem < rpm
  return d + (rem > 0 and 1 or 0)
end

-- Token bucket (bucket.rs) ---------------------------------------------------------------------------

-- Deficit after refilling up to now, capped at the capacity.
local function bucket_deficit(s, cap, now)
  local deficit = s.bd
  local elapsed = now - s.bl
  if elapsed > 0 then
    -- Rounding of a product above 2^53 keeps it above the (exact) deficit: the comparison stays right.
    local refilled = elapsed * cap
    if refilled >= deficit then
      deficit = 0
    else
      deficit = deficit - refilled
    end
  end
  local full = cap * UNITS
  if deficit > full then
    deficit = full
  end
  return deficit
end

-- nil if `tokens` fit at now; 'never' if they exceed the capacity; else the wait in ms.
local function bucket_check(s, cap, tokens, now)
  if tokens > cap then
    return 'never'
  end
  local after = bucket_deficit(s, cap, now) + tokens * UNITS
  local full = cap * UNITS
  if after <= full then
    return nil
  end
  return ceildiv(after - full, cap)
end

local function bucket_take(s, cap, tokens, now)
  s.bd = bucket_deficit(s, cap, now) + tokens * UNITS
  if now > s.bl then
    s.bl = now
  end
end

local function bucket_available(s, cap, now)
  return floordiv(cap * UNITS - bucket_deficit(s, cap, now), UNITS)
end

local function bucket_reset(s, cap, now)
  if cap == 0 then
    return 0
  end
  return ceildiv(bucket_deficit(s, cap, now), cap)
end

local function bucket_refund(s, tokens)
  s.bd = s.bd - tokens * UNITS
  if s.bd < 0 then
    s.bd = 0
  end
end

-- Calendar windows (window.rs) -----------------------------------------------------------------------

-- The counters as seen in window `index`: a later stored window stays (a lagging caller's now).
local function window_at(w, index)
  if index > w.i then
    return {i = index, tu = ZERO, tr = ZERO, cu = ZERO, cr = ZERO}
  end
  return w
end

local function fits(used, reserved, amount, limit)
  return uzero(amount) or ucmp(uadd_exact(uadd_exact(used, reserved), amount), limit) <= 0
end

-- Moves a reservation made in window `index` to min(actual, reserved) of use; a rolled window is gone.
local function window_settle(w, index, tokens, actual_tokens, cost, actual_cost)
  if w.i ~= index then
    return
  end
  w.tr = usub(w.tr, tokens)
  w.tu = uadd(w.tu, umin(actual_tokens, tokens))
  w.cr = usub(w.cr, cost)
  w.cu = uadd(w.cu, umin(actual_cost, cost))
end
