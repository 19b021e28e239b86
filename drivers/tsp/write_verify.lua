-- hilwv: write-verify of ONE routed 1T1R cell on a Keithley 2600B (TSP).
-- Wiring: smua drives the bit line (the board grounds the source line), smub drives the
-- word line (gate). SET = positive BL pulse with a ramped gate; RESET = negative BL pulse
-- (reverse polarity) with a fixed high gate; FORM = ramped high BL pulse with a fixed gate.
-- Same algorithm as hil.program.write_verify_host, for one cell:
--   read (repeat-average filter) -> in band? -> unresponsive? -> out of pulses? -> one pulse.
-- hilwv_policy(...) is called once; hilwv_cell(lo, hi) prints "G<TAB>pulses<TAB>status"
-- (status 0 in band, 1 max pulses, 2 unresponsive). Lua 5.0 subset (no %, no #, no goto).
hilwv_p = {}

function hilwv_policy(v_read, read_gate, n_verify, max_pulses, width,
                      set_v, sg0, sgs, sgm, rv0, rvs, rvm, rgate,
                      fthr, fv0, fvs, fvm, fgate, stuck_after, min_stuck)
  hilwv_p = {v_read = v_read, read_gate = read_gate, n_verify = n_verify,
             max_pulses = max_pulses, width = width,
             set_v = set_v, sg0 = sg0, sgs = sgs, sgm = sgm,
             rv0 = rv0, rvs = rvs, rvm = rvm, rgate = rgate,
             fthr = fthr, fv0 = fv0, fvs = fvs, fvm = fvm, fgate = fgate,
             stuck_after = stuck_after, min_stuck = min_stuck}
end

function hilwv_ramp(k, start, step, mx)
  local v = start + k * step
  if v >= mx - 1e-12 * math.max(1, math.abs(mx)) then
    return mx, true
  end
  return v, false
end

function hilwv_read()
  local p = hilwv_p
  smub.source.levelv = p.read_gate
  smua.source.levelv = p.v_read
  local i = smua.measure.i()
  smua.source.levelv = 0
  return i / p.v_read
end

function hilwv_pulse(v_bl, gate)
  smub.source.levelv = gate
  smua.source.levelv = v_bl
  delay(hilwv_p.width)
  smua.source.levelv = 0
end

function hilwv_cell(lo, hi)
  local p = hilwv_p
  local S = p.stuck_after
  local thr = math.max(hi - lo, p.min_stuck)
  local hist = {}
  local pulses, it, at_max, last_dir = 0, 0, 0, 0
  local ks, kr, kf = 0, 0, 0
  local formed = false
  local g, status
  smua.measure.filter.type = smua.FILTER_REPEAT_AVG
  smua.measure.filter.count = p.n_verify
  smua.measure.filter.enable = smua.FILTER_ON
  while true do
    g = hilwv_read()
    hist[it] = g
    if g >= p.fthr then formed = true end
    if g >= lo and g <= hi then status = 0; break end
    if it >= S and at_max >= S and math.abs(g - hist[it - S]) <= thr then status = 2; break end
    if pulses >= p.max_pulses then status = 1; break end
    local top = false
    if g < lo then
      if last_dir < 0 then ks = 0; kf = 0 end
      if (not formed) and g < p.fthr then
        local v
        v, top = hilwv_ramp(kf, p.fv0, p.fvs, p.fvm)
        kf = kf + 1
        hilwv_pulse(v, p.fgate)
      else
        local vg
        vg, top = hilwv_ramp(ks, p.sg0, p.sgs, p.sgm)
        ks = ks + 1
        hilwv_pulse(p.set_v, vg)
      end
      last_dir = 1
    else
      if last_dir > 0 then kr = 0 end
      local v
      v, top = hilwv_ramp(kr, p.rv0, p.rvs, p.rvm)
      kr = kr + 1
      hilwv_pulse(-v, p.rgate)
      last_dir = -1
    end
    pulses = pulses + 1
    if top then at_max = at_max + 1 else at_max = 0 end
    it = it + 1
  end
  smua.measure.filter.enable = smua.FILTER_OFF
  smub.source.levelv = 0
  print(g, pulses, status)
end
