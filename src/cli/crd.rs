//! `goodput crd`: prints goodput's CustomResourceDefinitions (ModelAutoscaler,
//! AcceleratorPool) as one multi-document YAML stream, ready for `kubectl apply -f -`.

pub fn run() -> anyhow::Result<()> {
    let yaml = goodput_autoscaler::crd::crds_yaml()
        .map_err(|e| anyhow::anyhow!("serialising the CRDs: {e}"))?;
    super::emit(&yaml)
}
