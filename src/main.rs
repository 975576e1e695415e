fn main() {
    let mut g = reprodiff::torch::Generator::cpu(0).unwrap();
    let t = g.randn(&[4], reprodiff::torch::DType::F32, reprodiff::torch::DeviceSpec::Cpu).unwrap();
    t.print();
    let mut g2 = reprodiff::torch::Generator::cpu(1).unwrap();
    let a = g2.randn(&[3], reprodiff::torch::DType::F32, reprodiff::torch::DeviceSpec::Cpu).unwrap();
    a.print();
    println!("{} {:?} {:?}", reprodiff::torch::cpu_capability().unwrap(), reprodiff::torch::cuda_info().unwrap(), reprodiff::torch::Determinism::in_force().unwrap());
    let s = g.get_state().unwrap(); println!("{:?}", s.size());
}
