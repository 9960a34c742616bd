package policy

// DecideZones is Decide for a flow known by its zones rather than by its
// interfaces: a session that records the zones its first packet came from
// and went to is judged again under a new policy this way (see
// dataplane/session.go, "Policy changes"). A zone name the set does not
// know is a deny with rule -1, like an unmanaged interface.
func (s *Set) DecideZones(from, to string, t Tuple) (allow bool, rule int) {
	return s.decidePair(s.zoneIndex(from), s.zoneIndex(to), t)
}

// HasZone reports whether the set's config has a zone of that name.
func (s *Set) HasZone(name string) bool { return s.zoneIndex(name) >= 0 }

func (s *Set) zoneIndex(name string) int {
	for i, n := range s.zoneNames {
		if n == name {
			return i
		}
	}
	return -1
}
