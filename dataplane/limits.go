package dataplane

// Limits are the most a backend can program, declared by the backend (its
// Limits function) so that the capability gate refuses a config that does
// not fit before anything is built, with the figures, and Apply refuses it
// the same way. Zero means no limit of that kind beyond validation.
type Limits struct {
	// Zones and Interfaces bound the config's lists.
	Zones      int `json:"zones,omitempty"`
	Interfaces int `json:"interfaces,omitempty"`
	// PolicyTermsPerZonePair bounds the terms one zone pair's policies
	// expand to, PolicyTerms all pairs together. A term is one source
	// prefix x destination prefix x destination port range of one address
	// family (what a datapath that cannot loop over lists compares); a
	// policy with empty lists is one term.
	PolicyTermsPerZonePair int `json:"policy_terms_per_zone_pair,omitempty"`
	PolicyTerms            int `json:"policy_terms,omitempty"`
	// MirrorRules bounds port_mirroring.
	MirrorRules int `json:"mirror_rules,omitempty"`
	// NATRules bounds the source-NAT rules and, separately, the
	// destination-NAT rules, a rule counting once per source prefix.
	// NATPools bounds the source-NAT pools: one per pool rule, one per
	// interface of the to_zone for a masquerading rule.
	NATRules int `json:"nat_rules,omitempty"`
	NATPools int `json:"nat_pools,omitempty"`
	// Tables bound tables.sessions, tables.flow_cache and tables.neighbors.
	Sessions  TableLimit `json:"sessions,omitzero"`
	FlowCache TableLimit `json:"flow_cache,omitzero"`
	Neighbors TableLimit `json:"neighbors,omitzero"`
}

// TableLimit bounds one table size of [Tables].
type TableLimit struct {
	// Max is the largest size; 0 means MaxTableEntries.
	Max uint32 `json:"max,omitempty"`
	// Fixed, when set, is the only size the backend has: the table cannot
	// be sized, so a config asking for another size is refused (0, the
	// default, is accepted).
	Fixed uint32 `json:"fixed,omitempty"`
	// NotSized, when set, says why the backend has no such table of its
	// own: a config that sets the field is refused with this reason
	// rather than silently ignored.
	NotSized string `json:"not_sized,omitempty"`
}

// MemoryCost is what a config would make a backend allocate, computed
// before anything is allocated, part by part.
type MemoryCost struct {
	Parts []MemoryPart `json:"parts"`
}

// MemoryPart is one allocation of a [MemoryCost].
type MemoryPart struct {
	// Name is the map, table or pool, e.g. "fw_sessions_v4" or "umem".
	Name  string `json:"name"`
	Bytes uint64 `json:"bytes"`
	// Detail says how the figure was made, e.g. "65536 entries x 168 B".
	Detail string `json:"detail,omitempty"`
}

// Total is the sum of the parts.
func (c MemoryCost) Total() uint64 {
	var t uint64
	for _, p := range c.Parts {
		t += p.Bytes
	}
	return t
}

// Largest returns the biggest part (the zero part when there is none).
func (c MemoryCost) Largest() MemoryPart {
	var l MemoryPart
	for _, p := range c.Parts {
		if p.Bytes > l.Bytes {
			l = p
		}
	}
	return l
}
